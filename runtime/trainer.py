"""The device-side trainer: one compiled artifact, driven with numpy arrays, no torch anywhere.

Parameters, states (BatchNorm running statistics) and SGD velocities live on the TVM device between
steps; numpy copies are made only when asked for (``params``) so a training loop does not pay for them.
"""

import math
import numbers

import numpy as np
import tvm

from .manifest import DROPOUT_SEED
from .skeleton import validate_skeleton


class InputError(ValueError):
    """Input arrays or hyper-parameters that do not match the compiled shapes or dtypes, or are not finite."""


class Trainer:
    """``vm``: the Relax VM of a library already checked against ``manifest`` (runtime/library.py);
    ``signer``: the key id that signed the artifact (None: loaded with allow_unsigned)."""

    def __init__(self, manifest, vm, initial_arrays, device, signer=None):
        self.manifest = manifest
        self.device = device
        self.signer = signer
        self._vm = vm
        self.conv_layers = manifest["conv_layers"]
        self.param_names = [p["name"] for p in manifest["params"]]
        self.state_names = [s["name"] for s in manifest["states"]]
        self.input_shape = tuple(manifest["input_shape"])
        self.dtype = np.dtype(manifest["dtype"])  # of inputs, parameters, hyperparameters and gradients
        self.num_classes = manifest["num_classes"]
        self.optimizer = dict(manifest["optimizer"])
        self._params = [self._tensor(initial_arrays[n]) for n in self.param_names]
        self._states = [self._tensor(initial_arrays[n]) for n in self.state_names]
        # A model with Dropout takes a seed in its train-mode functions; each call draws the next one
        # unless given one, so every step has its own mask and the same seed rebuilds it.
        self.has_dropout = DROPOUT_SEED in manifest["functions"]["gradients"]
        self.dropout_seed = 0
        self._hypers = {}  # name -> (value, 0-d tensor) of the last step: a training loop repeats them
        self._last_skeleton = None  # (what it was, its index tensors): UpdateSkel steps repeat one skeleton
        self._last_importance = None
        self.reset_optimizer()

    # ---- what the model is -------------------------------------------------------------------
    @property
    def skeleton_layers(self):
        """{CONV weight name: (out_channels, k)} in graph order."""
        return {layer["weight"]: (layer["out_channels"], layer["k"]) for layer in self.conv_layers}

    @property
    def params(self):
        return {n: t.numpy() for n, t in zip(self.param_names, self._params)}

    @property
    def states(self):
        return {n: t.numpy() for n, t in zip(self.state_names, self._states)}

    def set_params(self, params):
        """Replace some or all parameters (and BatchNorm states, by their names)."""
        shapes = {p["name"]: tuple(p["shape"]) for p in self.manifest["params"] + self.manifest["states"]}
        for name, value in params.items():
            if name not in shapes:
                raise InputError(f"unknown parameter {name!r}")
            value = np.asarray(value)
            if value.shape != shapes[name]:
                raise InputError(f"parameter {name}: shape {value.shape}, expected {shapes[name]}")
            if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
                raise InputError(f"parameter {name}: dtype {value.dtype} is not a real number type")
            if not np.isfinite(value).all():
                raise InputError(f"parameter {name} holds NaN or Inf")
        for name, value in params.items():
            tensor = self._tensor(np.asarray(value, dtype=self.dtype))
            if name in self.param_names:
                self._params[self.param_names.index(name)] = tensor
            else:
                self._states[self.state_names.index(name)] = tensor

    def reset_optimizer(self):
        """Zero the momentum buffers (torch.optim.SGD starts from none, which is the same)."""
        self._velocities = [self._tensor(np.zeros(t.shape, self.dtype)) for t in self._params]

    # ---- computing ---------------------------------------------------------------------------
    def gradients(self, x, y, skeleton=None, seed=None):
        """{param name: gradient} of the mean cross-entropy; skeleton backward when a skeleton is given.
        ``seed``: the Dropout seed (default: the next one); ignored by a model without Dropout."""
        args = [self._input(x), *self._params, *self._states, *self._seed(seed), self._labels(y)]
        if skeleton is None:
            outputs, grads = self._vm["gradients"](*args)
        else:
            outputs, grads = self._vm["gradients_skel"](*args, *self._skeleton(skeleton))
        return {n: g.numpy() for n, g in zip(self.param_names, grads)}

    def train_step(self, x, y, skeleton=None, lr=None, momentum=None, weight_decay=None, seed=None):
        """One SGD step (torch.optim.SGD semantics); returns the loss. BatchNorm states are updated."""
        hyper = [self._hyper(k, v if v is not None else self.optimizer[k])
                 for k, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay))]
        args = [self._input(x), self._labels(y), *hyper, *self._params, *self._states, *self._velocities, *self._seed(seed)]
        if skeleton is None:
            result = self._vm["train_step"](*args)
        else:
            result = self._vm["train_step_skel"](*args, *self._skeleton(skeleton))
        p, s = len(self._params), len(self._states)
        self._params = list(result[1 : 1 + p])
        self._states = list(result[1 + p : 1 + p + s])
        self._velocities = list(result[1 + p + s : 1 + 2 * p + s])
        self._last_importance = result[1 + 2 * p + s :]
        return float(result[0].numpy())

    @property
    def last_importance(self):
        """{CONV weight name: sum over N, H, W of |Y|} of the last train_step (None before one); copied to
        numpy only when asked for, so steps that do not select a skeleton do not pay for it."""
        return None if self._last_importance is None else self._named_importance(self._last_importance)

    def importance(self, x, seed=None):
        """{CONV weight name: sum over N, H, W of |Y|} from a train-mode forward (states untouched)."""
        result = self._vm["forward_train"](self._input(x), *self._params, *self._states, *self._seed(seed))
        return self._named_importance(result[1 + len(self._states) :])

    def predict(self, x):
        """Logits of the inference-mode forward (BatchNorm on running statistics)."""
        result = self._vm["predict"](self._input(x), *self._params, *self._states)
        # the forward returns (logits, *states); a model without BatchNorm returns the logits alone
        return (result[0] if self._states else result).numpy()

    # ---- checking inputs ---------------------------------------------------------------------
    def _named_importance(self, tensors):
        return {layer["weight"]: t.numpy() for layer, t in zip(self.conv_layers, tensors)}

    def _tensor(self, array):
        return tvm.runtime.tensor(np.asarray(array, order="C"), self.device)  # (ascontiguousarray makes 0-d 1-d)

    def _hyper(self, name, value):
        """A hyper-parameter as a 0-d tensor: a finite real number >= 0 (torch.optim.SGD refuses negative ones)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        last = self._hypers.get(name)
        if last is None or last[0] != value:
            last = self._hypers[name] = (value, self._tensor(np.asarray(value, dtype=self.dtype)))
        return last[1]

    def _input(self, x):
        x = np.asarray(x)
        if x.dtype != self.dtype:
            raise InputError(f"input must be {self.dtype}, got {x.dtype}")
        if x.shape != self.input_shape:
            raise InputError(f"input shape {x.shape} does not match the compiled {self.input_shape}")
        if not np.isfinite(x).all():
            raise InputError("input holds NaN or Inf")
        return self._tensor(x)

    def _labels(self, y):
        y = np.asarray(y)
        if not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"labels must be integers, got {y.dtype}")
        if y.shape != (self.input_shape[0],):
            raise InputError(f"labels shape {y.shape} does not match the batch ({self.input_shape[0]},)")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise InputError(f"label {int(y.min() if y.min() < 0 else y.max())} out of range [0, {self.num_classes})")
        return self._tensor(y.astype(np.int64))

    def _seed(self, seed):
        """[] for a model without Dropout, else [the seed tensor], advancing the counter when none is given."""
        if not self.has_dropout:
            return []
        if seed is None:
            seed, self.dropout_seed = self.dropout_seed, self.dropout_seed + 1
        return [self._tensor(np.asarray(seed, dtype=np.int64))]

    def _skeleton(self, skeleton):
        """The validated index tensors; the last skeleton's are reused while its names and bytes are unchanged."""
        arrays = {name: np.asarray(v) for name, v in skeleton.items()}
        key = sorted((name, a.dtype.str, a.shape, a.tobytes()) for name, a in arrays.items())
        if self._last_skeleton is None or self._last_skeleton[0] != key:
            self._last_skeleton = (key, [self._tensor(v) for v in validate_skeleton(arrays, self.conv_layers)])
        return self._last_skeleton[1]
