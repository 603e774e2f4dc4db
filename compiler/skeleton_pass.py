"""The skeleton pass: rewrite every CONV backward of a gradient function into its k-channel form.

The pass is a module pass: it reads ``gradients`` (made by relax.transform.Gradient with the corrected
conv2d gradient of conv_gradient.py) and adds ``gradients_skel`` whose extra parameters are the index
vectors, one per CONV layer in graph order.  In it, each layer's dW, db and dX bindings are replaced by the
k-channel forms of skeleton_backward.py; the full-size CONV backward they replace becomes dead and is
removed.
"""

import tvm
from tvm import relax

from .conv_layers import find_conv_layers
from .errors import CompileError
from .skeleton_backward import SkeletonBackward


@tvm.transform.module_pass(opt_level=0, name="SkeletonizeConvBackward")
class SkeletonizeConvBackward:
    """Add ``new_name``: ``func_name`` with every CONV backward sliced to k_i channels."""

    def __init__(self, ks, num_params, func_name="gradients", new_name="gradients_skel"):
        self.ks = list(ks)
        self.num_params = num_params
        self.func_name = func_name
        self.new_name = new_name

    def transform_module(self, mod, ctx):
        func = relax.utils.copy_with_new_vars(mod[self.func_name])
        new_func = _SkeletonRewriter(func, self.ks, self.num_params).rewrite()
        bb = relax.BlockBuilder(mod)
        bb.add_func(new_func.with_attr("global_symbol", self.new_name), self.new_name)
        mod = bb.get()
        return relax.transform.DeadCodeElimination([gvar.name_hint for gvar in mod.get_global_vars()])(mod)


def _root(var, bound):
    """Follow alias bindings (v1 = v0) to the var bound to an actual computation."""
    while isinstance(bound.get(var), relax.Var):
        var = bound[var]
    return var


def _is_op(expr, name):
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


@relax.expr_functor.mutator
class _SkeletonRewriter(relax.PyExprMutator):
    def __init__(self, func, ks, num_params):
        super().__init__()
        self.func = func
        params = list(func.params[1 : 1 + num_params])
        self.layers = find_conv_layers(func, params)
        if len(self.layers) != len(ks):
            raise CompileError(f"skeleton pass: {len(ks)} skeleton sizes for {len(self.layers)} CONV layers")
        self.indices = [
            relax.Var(f"skel_{layer.weight.name}", relax.TensorType((k,), "int64")) for layer, k in zip(self.layers, ks)
        ]
        self.ks = ks
        bound = {b.var: b.value for block in func.body.blocks for b in block.bindings}
        grad_of = dict(zip(params, self._returned_grads(func, bound)))
        self.backward = {}  # layer index -> SkeletonBackward, made at the first of its bindings
        self.replace = {}  # var of a full-size backward binding -> (kind, layer index)
        self.dy = {}
        for i, layer in enumerate(self.layers):
            weight_root = _root(grad_of[layer.weight], bound)
            self.dy[i] = self._output_grad(layer, weight_root, bound)
            self.replace[weight_root] = ("weight", i)
            if layer.bias is not None:
                self.replace[_root(grad_of[layer.bias], bound)] = ("bias", i)
        for var, value in bound.items():
            if _is_op(value, "relax.nn.conv2d_transpose"):
                for i, layer in enumerate(self.layers):
                    if value.args[1].same_as(layer.weight) and value.args[0].same_as(self.dy[i]):
                        self.replace[var] = ("data", i)

    @staticmethod
    def _returned_grads(func, bound):
        result = func.body.body
        result = bound.get(result, result)
        if not isinstance(result, relax.Tuple) or len(result.fields) != 2:
            raise CompileError("skeleton pass expects a Gradient function returning (outputs, grads)")
        grads = result.fields[1]
        grads = bound.get(grads, grads)
        return list(grads.fields)

    @staticmethod
    def _output_grad(layer, weight_root, bound):
        """dY of a layer: the kernel operand of its weight-gradient correlation."""
        value = bound[weight_root]
        if _is_op(value, "relax.strided_slice"):
            value = bound.get(value.args[0], value.args[0])
        if not (_is_op(value, "relax.nn.conv2d") and value.attrs.data_layout == "CNHW"):
            raise CompileError(
                f"skeleton pass: the gradient of {layer.weight.name} is not a single CONV weight gradient "
                f"(is the weight used twice?)"
            )
        return value.args[1]

    def rewrite(self):
        body = self.visit_expr(self.func.body)
        params = list(self.func.params) + self.indices
        return relax.Function(params, body, self.func.ret_ty, self.func.is_pure, self.func.attrs)

    def visit_var_binding_(self, binding):
        if binding.var not in self.replace:
            return super().visit_var_binding_(binding)
        kind, i = self.replace[binding.var]
        new_value = self._skeleton_grad(kind, i)
        new_var = self.builder_.emit(new_value, binding.var.name + "_skel")
        self.set_var_remap(binding.var, new_var)

    def _skeleton_grad(self, kind, i):
        if i not in self.backward:
            layer = self.layers[i]
            self.backward[i] = SkeletonBackward(
                self.builder_.emit,
                self.visit_expr(layer.call.args[0]),
                self.visit_expr(layer.weight),
                self.visit_expr(self.dy[i]),
                self.indices[i],
                layer.call.attrs,
            )
        return getattr(self.backward[i], f"{kind}_grad")()
