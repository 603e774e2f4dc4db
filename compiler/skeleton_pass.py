"""The skeleton pass: rewrite every CONV backward of a gradient function into its k-channel form.

For a CONV layer Y = conv2d(X, W) (+ b) and a runtime index vector idx of static length k (FEDSKEL.md):
    dY_k = take(dY, idx, axis=1)            the skeleton's slice of the output gradient
    dW   = scatter rows idx <- weight_grad(X, dY_k)      (other rows 0)
    db   = scatter idx <- sum(dY_k over N, H, W)         (other entries 0)
    dX   = data_grad(dY_k, take(W, idx, axis=0))         (flows only through the skeleton filters)
which is autograd with dY zeroed outside idx, at k/Cout of the FLOPs.  Grouped CONVs: a selected filter o
reads input group o // (Cout/g), so the k filters form a k-group CONV over the gathered input channels,
and dX is scatter-added back (several selected filters may share an input group).

The pass is a module pass: it reads ``gradients`` (made by relax.transform.Gradient with the corrected
conv2d gradient of conv_gradient.py) and adds ``gradients_skel`` whose extra parameters are the index
vectors, one per CONV layer in graph order.  The full-size CONV backward bindings it replaces become dead
and are removed.
"""

import tvm
from tvm import relax
from tvm.relax.op import (
    add, arange, floor_divide, multiply, permute_dims, reshape, scatter_nd, sum as reduce_sum, take, zeros,
)

from .conv_gradient import conv2d_data_grad, conv2d_weight_grad, static_shape
from .conv_layers import find_conv_layers
from .errors import CompileError


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
        self.memo = {}  # (layer, name) -> emitted var, so dY_k and the index reshapes are computed once
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

    def _once(self, i, name, make):
        if (i, name) not in self.memo:
            self.memo[(i, name)] = self.builder_.emit(make())
        return self.memo[(i, name)]

    def _skeleton_grad(self, kind, i):
        layer, idx, k = self.layers[i], self.indices[i], self.ks[i]
        bb = self.builder_
        x = self.visit_expr(layer.call.args[0])
        weight = self.visit_expr(layer.weight)
        attrs = layer.call.attrs
        groups = int(attrs.groups)
        rows = self._once(i, "rows", lambda: reshape(idx, (k, 1)))
        dy_k = self._once(i, "dy_k", lambda: take(self.visit_expr(self.dy[i]), idx, axis=1))
        if kind == "bias":
            return scatter_nd(zeros((layer.out_channels,), "float32"), rows, reduce_sum(dy_k, axis=[0, 2, 3]))
        in_channels = static_shape(x)[1]
        per_group = (layer.out_channels // groups, in_channels // groups)
        channels = None if groups == 1 else self._once(i, "channels", lambda: self._input_channels(idx, k, *per_group))
        if kind == "weight":
            data = x if groups == 1 else bb.emit(take(x, channels, axis=1))
            dw_k = bb.emit(conv2d_weight_grad(data, dy_k, attrs, 1 if groups == 1 else k, static_shape(weight)[2:]))
            return scatter_nd(zeros(static_shape(weight), "float32"), rows, dw_k)
        w_k = bb.emit(take(weight, idx, axis=0))
        dx = conv2d_data_grad(dy_k, w_k, attrs, 1 if groups == 1 else k, static_shape(x)[2:])
        if groups == 1:
            return dx
        return self._scatter_add_channels(dx, channels, static_shape(x))

    @staticmethod
    def _input_channels(idx, k, out_per_group, in_per_group):
        """Input channels read by each selected filter: group(o) * Cin/g + [0, Cin/g)."""
        group = floor_divide(idx, relax.const(out_per_group, "int64"))
        first = multiply(reshape(group, (k, 1)), relax.const(in_per_group, "int64"))
        return reshape(add(first, reshape(arange(0, in_per_group, 1, "int64"), (1, in_per_group))), (k * in_per_group,))

    def _scatter_add_channels(self, dx_selected, channels, x_shape):
        bb = self.builder_
        n, c, h, w = x_shape
        selected = static_shape(channels)[0]
        rows = bb.emit(permute_dims(bb.emit(dx_selected), [1, 0, 2, 3]))
        summed = bb.emit(scatter_nd(zeros((c, n, h, w), "float32"), reshape(channels, (selected, 1)), rows, "add"))
        return permute_dims(summed, [1, 0, 2, 3])
