"""A federated client on a device: local SGD on a compiled artifact, with FedSkel's two phases.

Built on fedskel.runtime alone (no torch, no fl), so the same code runs on an edge device. What travels
and how a download merges is the server strategy's business; the client trains, keeps its skeleton and
reports what each step cost.
"""

import math
import time
from dataclasses import dataclass

import numpy as np

from .evaluation import accuracy
from .skeleton import top_k_skeleton, validate_skeleton

FULL, SETSKEL, UPDATESKEL = "full", "setskel", "updateskel"
PHASES = (FULL, SETSKEL, UPDATESKEL)


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite: the local model is unusable and must not be uploaded."""


@dataclass(frozen=True)
class LocalTraining:
    """How a client trains in one round; keep it equal across strategies so comparisons are fair.

    ``skeleton``: FedSkel training instead of plain full back-propagation. In a round that (re)selects
    the skeleton, the first ``setskel_steps`` of the ``steps`` are SetSkel (full backward, importance
    accumulating), the rest UpdateSkel; other rounds are all UpdateSkel. ``reselect_every``: own rounds
    between selections (1: every round; None: once). momentum / weight_decay None: the artifact's.
    """

    steps: int
    lr: float
    momentum: float | None = None
    weight_decay: float | None = None
    skeleton: bool = False
    setskel_steps: int = 1
    reselect_every: int | None = 1

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.skeleton:
            if not 1 <= self.setskel_steps <= self.steps:
                raise ValueError(f"setskel_steps must be in [1, steps={self.steps}], got {self.setskel_steps}")
            if self.reselect_every is not None and self.reselect_every < 1:
                raise ValueError(f"reselect_every must be >= 1 (or None: once), got {self.reselect_every}")


@dataclass(frozen=True)
class RoundReport:
    """One round of local training: mean loss, and wall seconds of every step by phase."""

    num_examples: int
    loss: float
    step_seconds: dict
    selected_skeleton: bool


class Client:
    """A Trainer plus this device's training data; its parameters persist between rounds (personalisation)."""

    def __init__(self, trainer, x, y, training, seed=0):
        self.trainer = trainer
        self.training = training
        self._x, self._y = _checked_data(trainer, x, y)
        self._rng = np.random.default_rng(seed)
        self._order = np.zeros(0, np.int64)
        self._skeleton = None
        self.rounds_trained = 0

    @property
    def num_examples(self):
        return len(self._y)

    @property
    def skeleton(self):
        """{CONV weight: sorted channel indices} from the last SetSkel; None before the first one."""
        return self._skeleton

    @property
    def params(self):
        return self.trainer.params

    def set_params(self, params):
        self.trainer.set_params(params)

    def evaluate(self, x, y):
        """Accuracy of the current local model on (x, y)."""
        return accuracy(self.trainer, x, y)

    def checkpoint(self):
        """Everything needed to go on exactly from here (a device whose process restarts between rounds):
        parameters and BatchNorm states, skeleton, rounds trained, and the batch stream's position."""
        return {
            "model": {**self.trainer.params, **self.trainer.states},
            "skeleton": None if self._skeleton is None else {n: v.copy() for n, v in self._skeleton.items()},
            "rounds_trained": self.rounds_trained,
            "batch_order": self._order.copy(),
            "rng_state": self._rng.bit_generator.state,
        }

    def resume(self, checkpoint):
        """Continue from a checkpoint() of a client with the same artifact and data."""
        self.trainer.set_params(checkpoint["model"])
        skeleton = checkpoint["skeleton"]
        if skeleton is not None:
            vectors = validate_skeleton(skeleton, self.trainer.conv_layers)
            skeleton = {layer["weight"]: v for layer, v in zip(self.trainer.conv_layers, vectors)}
        self._skeleton = skeleton
        order = np.asarray(checkpoint["batch_order"], dtype=np.int64)
        if order.ndim != 1 or (order.size and (order.min() < 0 or order.max() >= self.num_examples)):
            raise ValueError(f"checkpoint's batch order does not index this client's {self.num_examples} samples")
        self._order = order
        self.rounds_trained = int(checkpoint["rounds_trained"])
        self._rng.bit_generator.state = checkpoint["rng_state"]

    def train_round(self):
        """Local training for one round (momentum restarts, as with a fresh optimizer per round)."""
        self.trainer.reset_optimizer()
        losses, seconds = [], {phase: [] for phase in PHASES}
        selecting = self.training.skeleton and self._needs_selection()
        setskel_steps = self.training.setskel_steps if selecting else 0
        if selecting:
            importance = {}
            for _ in range(setskel_steps):
                self._step(SETSKEL, losses, seconds)
                for name, value in self.trainer.last_importance.items():
                    importance[name] = importance.get(name, 0.0) + value.astype(np.float64)
            self._skeleton = top_k_skeleton(importance, self.trainer.conv_layers)
        phase = UPDATESKEL if self.training.skeleton else FULL
        for _ in range(self.training.steps - setskel_steps):
            self._step(phase, losses, seconds)
        self.rounds_trained += 1
        return RoundReport(self.num_examples, float(np.mean(losses)), seconds, selecting)

    def _needs_selection(self):
        every = self.training.reselect_every
        return self._skeleton is None or (every is not None and self.rounds_trained % every == 0)

    def _step(self, phase, losses, seconds):
        x, y = self._next_batch()
        t = self.training
        skeleton = self._skeleton if phase == UPDATESKEL else None
        start = time.perf_counter()
        loss = self.trainer.train_step(x, y, skeleton, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        seconds[phase].append(time.perf_counter() - start)
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss} at step {len(losses) + 1} of round {self.rounds_trained + 1}")
        losses.append(loss)

    def _next_batch(self):
        """The next batch from a stream of seeded shuffles (a client smaller than a batch repeats samples)."""
        batch = self.trainer.input_shape[0]
        while len(self._order) < batch:
            self._order = np.concatenate([self._order, self._rng.permutation(self.num_examples)])
        index, self._order = self._order[:batch], self._order[batch:]
        return self._x[index], self._y[index]


def _checked_data(trainer, x, y):
    x, y = np.asarray(x), np.asarray(y)
    sample_shape = tuple(trainer.input_shape[1:])
    if x.dtype != trainer.dtype or x.ndim != 1 + len(sample_shape) or x.shape[1:] != sample_shape:
        raise ValueError(f"training samples must be {trainer.dtype} of shape (N, {', '.join(map(str, sample_shape))}), got {x.dtype} {x.shape}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(x):
        raise ValueError(f"labels must be {len(x)} integers, one per sample, got {y.dtype} {y.shape}")
    if len(y) == 0:
        raise ValueError("a client needs at least one training sample")
    if y.min() < 0 or y.max() >= trainer.num_classes:
        raise ValueError(f"labels must be in [0, {trainer.num_classes}), found {y.min()}..{y.max()}")
    if not np.isfinite(x).all():
        raise ValueError("training samples contain NaN or Inf")
    return x, y.astype(np.int64)
