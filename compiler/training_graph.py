"""Derive the training module from an imported forward: forward, loss, backward, optimizer step.

Functions of the module (all public, called by name by the runtime; argument order in
runtime/manifest.calling_convention):
- ``forward_train``: train-mode forward -> (logits, *new_states, *importance), importance per CONV layer
  being sum over N, H, W of |Y| (FedSkel's metric), so SetSkel gets it from the pass it runs anyway;
- ``predict``: inference-mode forward (BatchNorm on running statistics) -> (logits, *states);
- ``gradients`` / ``gradients_skel``: ((loss, *new_states, *importance), (*grads)); the skeleton form takes
  one int64 index vector of static length k per CONV layer;
- ``train_step`` / ``train_step_skel``: one SGD step (momentum, weight decay as in torch.optim.SGD) ->
  (loss, *new_params, *new_states, *new_velocities, *importance).
A model with Dropout gets one more input in its train-mode functions, ``dropout_seed`` (int64 scalar,
dropout.py); models without keep the plain signatures, so their artifacts and callers are
unchanged.  Every float32 reduction in them accumulates in float64 (wide_accumulation.py).
"""

import math
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.training import AppendLoss
from tvm.relax.training.loss import CrossEntropyLoss
from tvm.relax.utils import copy_with_new_vars

from fedskel.runtime.manifest import calling_convention

from . import conv_gradient, gradients  # noqa: F401  (register the corrected and missing gradient rules)
from .batch_norm_stats import DecomposeTrainingBatchNorm, exact_attributes, is_batch_norm
from .conv_layers import find_conv_layers
from .dropout import has_dropout, inference_dropout, training_dropout
from .errors import CompileError, tvm_reason
from .skeleton_pass import SkeletonizeConvBackward
from .wide_accumulation import WidenReductionAccumulators


@dataclass
class TrainingModule:
    module: tvm.IRModule
    conv_layers: list  # [{"weight", "bias", "out_channels", "k"}] in graph order
    function_args: dict  # function name -> its argument groups (the manifest's "functions")


def skeleton_size(ratio, out_channels):
    """k = ceil(r * Cout), at least 1 (FEDSKEL.md)."""
    return max(1, math.ceil(ratio * out_channels - 1e-9))


def build_training_module(imported, ratio):
    if not 0.0 < ratio <= 1.0:
        raise CompileError(f"skeleton ratio must be in (0, 1], got {ratio}")
    forward = exact_attributes(imported.module["main"])
    num_params = len(imported.param_names)
    params = list(forward.params[1 : 1 + num_params])
    layers = find_conv_layers(forward, params)
    names = {var: name for var, name in zip(params, imported.param_names)}
    conv_layers = [
        {
            "weight": names[layer.weight],
            "bias": names[layer.bias] if layer.bias is not None else None,
            "out_channels": layer.out_channels,
            "k": skeleton_size(ratio, layer.out_channels),
        }
        for layer in layers
    ]

    dropout = has_dropout(forward)
    forward_train = _with_importance(forward, layers)
    module = tvm.IRModule({"forward_train": training_dropout(forward_train) if dropout else forward_train})
    module["predict"] = inference_dropout(_inference_mode(copy_with_new_vars(forward)))
    module = _append_loss(module, len(imported.state_names) + len(layers))
    loss = module["loss"]
    try:
        module = relax.transform.Gradient("loss", require_grads=list(loss.params[1 : 1 + num_params]))(module)
    except (RuntimeError, ValueError) as exc:  # TVM 0.27 raises built-in exception types
        reason = tvm_reason(exc) or f"TVM's Gradient pass failed; ops without a gradient rule: {', '.join(_ungraded_ops(loss)) or 'none'}"
        raise CompileError(f"cannot differentiate {imported.name}: {reason}") from None
    functions = {gvar.name_hint: func for gvar, func in module.functions.items() if gvar.name_hint != "loss"}
    functions["gradients"] = functions.pop("loss_adjoint")
    module = DecomposeTrainingBatchNorm()(_module_of(functions))
    module = SkeletonizeConvBackward([layer["k"] for layer in conv_layers], num_params)(module)
    for name in ("gradients", "gradients_skel"):
        module = _add_sgd_step(module, name, num_params, len(imported.state_names), len(layers), int(dropout))
    return TrainingModule(WidenReductionAccumulators()(module), conv_layers, calling_convention(dropout))


def _ungraded_ops(func):
    """The Relax ops in ``func`` that have no registered gradient (the likely cause of a failed pass)."""
    names = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.get_attr("FPrimalGradient") is None:
            names.add(expr.op.name)

    relax.analysis.post_order_visit(func.body, visit)
    return sorted(names)


def _returned_fields(func):
    """The fields of the forward's result: the importer binds a tuple to a var, or returns one tensor."""
    result = func.body.body
    bound = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    value = bound.get(result, result)
    if isinstance(value, relax.Tuple):
        return list(value.fields)
    return [result]


def _with_importance(forward, layers):
    """The forward with one importance vector per CONV layer appended to its outputs."""
    bb = relax.BlockBuilder()
    outputs = _returned_fields(forward)
    with bb.function("forward_train", list(forward.params)):
        with bb.dataflow():
            for block in forward.body.blocks:
                for binding in block.bindings:
                    bb.emit_normalized(binding)
            importance = [
                bb.emit(relax.op.sum(relax.op.abs(layer.output_var), axis=[0, 2, 3]), f"importance{i}")
                for i, layer in enumerate(layers)
            ]
            # AppendLoss wants a literal tuple of output vars as the function result.
            result = [bb.emit_output(value) for value in outputs + importance]
        bb.emit_func_output(relax.Tuple(result))
    return bb.get()["forward_train"]


@relax.expr_functor.mutator
class _EvalBatchNorm(relax.PyExprMutator):
    """Switch every batch_norm to inference mode (normalise with the running statistics)."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if is_batch_norm(call) and call.attrs.training:
            a = call.attrs
            return relax.op.nn.batch_norm(*call.args, a.axis, a.epsilon, a.center, a.scale, a.momentum, training=False)
        return call


def _inference_mode(func):
    func = _EvalBatchNorm().visit_expr(func)
    return func.with_attr("global_symbol", "predict")


def _append_loss(module, num_extra_outputs):
    forward = module["forward_train"]
    logits_type = forward.ret_ty.fields[0]
    batch = int(logits_type.shape[0])
    loss = CrossEntropyLoss(reduction="mean")(logits_type, relax.TensorType((batch,), "int64"))
    return AppendLoss("forward_train", loss, num_backbone_outputs=1, new_func_name="loss")(module)


def _module_of(functions):
    """A module whose GlobalVars carry their function types (so functions can call each other)."""
    bb = relax.BlockBuilder()
    for name, func in functions.items():
        bb.add_func(func.with_attr("global_symbol", name), name)
    return bb.get()


def _add_sgd_step(module, grad_name, num_params, num_states, num_layers, num_seeds):
    """One torch-style SGD step around a gradient function: g += wd*p; v = m*v + g; p -= lr*v."""
    grad_func = module[grad_name]
    grad_params = list(grad_func.params)
    fresh = [relax.Var(v.name, v.ty) for v in grad_params]
    x = fresh[0]
    params = fresh[1 : 1 + num_params]
    states = fresh[1 + num_params : 1 + num_params + num_states]
    seeds = fresh[1 + num_params + num_states : 1 + num_params + num_states + num_seeds]
    labels = fresh[1 + num_params + num_states + num_seeds]
    skeleton = fresh[2 + num_params + num_states + num_seeds :]
    scalar = relax.TensorType((), x.ty.dtype)
    lr, momentum, weight_decay = (relax.Var(n, scalar) for n in ("lr", "momentum", "weight_decay"))
    velocities = [relax.Var(f"v_{p.name}", p.ty) for p in params]
    name = "train_step" + grad_name[len("gradients"):]
    bb = relax.BlockBuilder(module)
    with bb.function(name, [x, labels, lr, momentum, weight_decay, *params, *states, *velocities, *seeds, *skeleton]):
        with bb.dataflow():
            result = bb.emit(relax.Call(module.get_global_var(grad_name), [x, *params, *states, *seeds, labels, *skeleton]))
            outputs = bb.emit(relax.TupleGetItem(result, 0))
            grads = bb.emit(relax.TupleGetItem(result, 1))
            new_params, new_velocities = [], []
            for i, (p, v) in enumerate(zip(params, velocities)):
                g = bb.emit(relax.op.add(relax.TupleGetItem(grads, i), relax.op.multiply(weight_decay, p)))
                v_new = bb.emit(relax.op.add(relax.op.multiply(momentum, v), g))
                new_velocities.append(v_new)
                new_params.append(bb.emit(relax.op.subtract(p, relax.op.multiply(lr, v_new))))
            loss = relax.TupleGetItem(outputs, 0)
            new_states = [relax.TupleGetItem(outputs, 1 + i) for i in range(num_states)]
            importance = [relax.TupleGetItem(outputs, 1 + num_states + i) for i in range(num_layers)]
            result = bb.emit_output(relax.Tuple([loss, *new_params, *new_states, *new_velocities, *importance]))
        bb.emit_func_output(result)
    return bb.get()
