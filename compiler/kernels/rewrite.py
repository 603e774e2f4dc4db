"""The pass that gives every CONV (and dense matmul) of a training module its hand-scheduled kernel.

It rewrites the three forms a CONV takes in the training graph (conv_gradient.py makes the last two):
- forward ``conv2d`` NCHW/OIHW             -> direct NHWC CONV (Winograd F(2x2, 3x3) for 3x3 stride 1)
- dgrad ``conv2d_transpose`` NCHW/IOHW     -> direct NHWC CONV over (zero-dilated) padded dY, weights rotated
                                              (Winograd for 3x3 stride 1)
- wgrad ``conv2d`` CNHW/IOHW (+ the slice of its extra taps) -> NHWC weight gradient of exactly R x S taps
                                              (Winograd F(3x3, 2x2) for 3x3 stride 1, dY padded to vectors)
skeleton forms included (they are the same ops on k channels); and every 2-D ``matmul`` (FC forward, dX, dW)
-> matmul.py.  Each becomes layout kernels + the CONV
kernel, so the public NCHW/OIHW tensors are unchanged.  Grouped CONVs and other out_dtypes keep TVM's
lowering.  Identical kernels are added once; identical layout conversions of one tensor are merged
(EliminateCommonSubexpr), so the forward and the wgrad share X's channels-last copy.
"""

import tvm
from tvm import relax

from . import direct, layout, matmul, phases, wgrad, winograd, winograd_wgrad
from .tiles import target_isa

FORWARD, DGRAD, WGRAD, MATMUL = "forward", "dgrad", "wgrad", "matmul"
# Winograd's 16 GEMMs need this many input channels to outweigh its transforms (resnet18's skeleton dgrads on
# AVX-512: k = 7 ran 1.1x direct's time, k = 13 0.84x)
WINOGRAD_MIN_CHANNELS = 8
# the weight gradient's dY channels are padded with zeros to whole vectors, up to this factor (k = 13 -> 16 ran in
# 0.50x direct's time, k = 20 -> 32 in 0.97x, k = 7 -> 16 in 1.33x)
WINOGRAD_WGRAD_MAX_PADDING = 1.5


def _ints(values):
    return tuple(int(v) for v in values)


def _shape(expr):
    return _ints(expr.ty.shape)


def _is_op(expr, name):
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def conv_kind(call):
    """FORWARD, DGRAD, WGRAD or MATMUL for a call these kernels cover, else None."""
    if _is_op(call, "relax.matmul"):
        kind = MATMUL if all(_is_static_matrix(arg) for arg in call.args) else None
    elif _is_op(call, "relax.nn.conv2d"):
        layouts = (call.attrs.data_layout, call.attrs.kernel_layout, call.attrs.out_layout)
        kind = {("NCHW", "OIHW", "NCHW"): FORWARD, ("CNHW", "IOHW", "CNHW"): WGRAD}.get(layouts)
    elif _is_op(call, "relax.nn.conv2d_transpose"):
        layouts = (call.attrs.data_layout, call.attrs.kernel_layout, call.attrs.out_layout)
        kind = DGRAD if layouts == ("NCHW", "IOHW", "NCHW") else None
    else:
        return None
    dtype = str(call.args[0].ty.dtype)
    same_dtype = call.attrs.out_dtype is None or str(call.attrs.out_dtype) in ("", "void", dtype)
    same_dtype = same_dtype and str(call.args[1].ty.dtype) == dtype
    grouped = kind in (FORWARD, DGRAD, WGRAD) and int(call.attrs.groups) != 1
    if kind is None or grouped or not same_dtype or dtype not in ("float32", "float64"):
        return None
    return kind


def _is_static_matrix(expr):
    shape = getattr(expr.ty, "shape", None)
    return shape is not None and len(shape) == 2 and all(isinstance(d, tvm.tirx.IntImm) for d in shape)


@tvm.transform.module_pass(opt_level=0, name="UseConvKernels")
class UseConvKernels:
    """Rewrite every covered CONV of every Relax function to the NHWC kernels for ``tvm_target`` (a JSON dict)."""

    def __init__(self, tvm_target):
        self.isa = target_isa(tvm_target)

    def transform_module(self, mod, ctx):
        mod = _Rewriter(mod, self.isa).rewrite()
        mod = relax.transform.EliminateCommonSubexpr()(mod)
        return relax.transform.DeadCodeElimination([gv.name_hint for gv in mod.get_global_vars()])(mod)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, isa):
        super().__init__(mod)
        self.mod_ = mod
        self.isa = isa
        self.kernels = {}  # (builder, args) -> GlobalVar: each distinct kernel added once
        self.sliced = {}  # var of a wgrad conv -> the R x S its consumer slices out

    def rewrite(self):
        for gvar, func in self.mod_.functions.items():
            if isinstance(func, relax.Function):
                self.sliced = _sliced_wgrads(func)
                self.builder_.update_func(gvar, self.visit_expr(func))
        return self.builder_.get()

    def visit_var_binding_(self, binding):
        value = binding.value
        if binding.var in self.sliced:  # computed by its slice below; this full-size one is left dead
            return super().visit_var_binding_(binding)
        if _is_op(value, "relax.strided_slice") and value.args[0] in self.sliced:
            conv = self.lookup_binding(self.visit_expr(value.args[0]))
            new = self._weight_grad(conv, self.sliced[value.args[0]])
        elif conv_kind(value) is not None:
            new = self._lower(self.visit_expr(value))
        else:
            return super().visit_var_binding_(binding)
        result = self.builder_.emit(new, binding.var.name)
        if isinstance(binding.var, relax.DataflowVar):
            self.set_var_remap(binding.var, result)
        else:  # a dataflow block's output keeps its var
            self.builder_.emit_normalized(relax.VarBinding(binding.var, result))

    def _lower(self, call):
        kind = conv_kind(call)
        if kind == FORWARD:
            return self._forward(call)
        if kind == DGRAD:
            return self._data_grad(call)
        if kind == MATMUL:
            return self._matmul(call)
        return self._weight_grad(call, _shape(call)[2:])

    def _kernel(self, make, *args, role=None):
        """The GlobalVar of ``make(*args)``, named after the kernel's role (what a profile groups by)."""
        key = (make.__module__, make.__name__, role, args)
        if key not in self.kernels:
            self.kernels[key] = self.builder_.add_func(make(*args), f"fedskel_{role or make.__name__}")
        return self.kernels[key]

    def _call(self, out_shape, dtype, make, inputs, *args, role=None):
        gvar = self._kernel(make, *args, role=role)
        return self.builder_.emit(relax.call_tir(gvar, inputs, relax.TensorType(out_shape, dtype)))

    def _input_window(self, x, out_hw, kernel_hw, stride, dilation, padding):
        """X channels-last and padded to exactly the rows and columns the CONV's windows reach: (tensor, (Hp, Wp),
        the stride left to the CONV).  A strided 1x1 CONV reads every stride-th pixel only: those alone are
        copied, and the CONV runs at stride 1 on them."""
        top, left, _, _ = _ints(padding)
        dtype = str(x.ty.dtype)
        n, c = _shape(x)[:2]
        if kernel_hw == (1, 1) and stride[0] == stride[1] > 1:
            window = self._call((n, *out_hw, c), dtype, layout.to_channels_last, [x], _shape(x), dtype, out_hw,
                                (top, left), 1, stride[0])
            return window, out_hw, (1, 1)
        reach = tuple((out - 1) * st + (k - 1) * d + 1 for out, k, st, d in zip(out_hw, kernel_hw, stride, dilation))
        window = self._call((n, *reach, c), dtype, layout.to_channels_last, [x], _shape(x), dtype, reach, (top, left))
        return window, reach, stride

    def _forward(self, call):
        x, w = call.args
        dtype = str(x.ty.dtype)
        (n, c, _, _), (o, _, kh, kw) = _shape(x), _shape(w)
        oh, ow = _shape(call)[2:]
        stride, dilation = _ints(call.attrs.strides), _ints(call.attrs.dilation)
        xp, (hp, wp), stride = self._input_window(x, (oh, ow), (kh, kw), stride, dilation, call.attrs.padding)
        op = self.isa.padded(o, dtype)
        if self._winograd((kh, kw), stride, dilation, (oh, ow), c, dtype):
            return self._winograd_nchw(xp, w, (n, hp, wp, c), (oh, ow), o, op, dtype, False, "conv_forward")
        block = direct.weight_tile(self.isa, dtype, op, ow)
        wt = self._call((op // block, kh, kw, c, block), dtype, layout.filter_to_hwio, [w], _shape(w), dtype, op, block)
        return self._conv_nchw(direct.direct_conv, ((n, hp, wp, c), (kh, kw, c, op), stride, dilation, (oh, ow), dtype,
                                                    self.isa), [xp, wt], (n, o, oh, ow), op, dtype, "conv_forward")

    def _winograd(self, kernel_hw, stride, dilation, out_hw, in_channels, dtype):
        """Whether a CONV runs as Winograd: its geometry allows it and it has WINOGRAD_MIN_CHANNELS input channels
        (on resnet18's 3-channel stem it was 3x slower than direct).  A skeleton dgrad's input is dY's k channels:
        Winograd took resnet18's r = 0.3 ones from 1.46-1.51x oneDNN's time to 0.77-1.06x (256@8, 512@4), r = 0.1's
        512@4 (k = 52) from 1.12x to 0.90x, 128@16 (k = 13) from 1.23x to 1.03x."""
        return winograd.applies(kernel_hw, stride, dilation, out_hw) and in_channels >= WINOGRAD_MIN_CHANNELS

    def _winograd_nchw(self, inp, w, inp_shape, out_hw, channels, padded, dtype, flipped, role):
        """winograd.winograd_conv of ``inp`` (padded NHWC) by the weights ``w`` (OIHW, rotated and transposed when
        ``flipped``: the dgrad), transformed for it each step."""
        block = winograd.channel_tile(self.isa, dtype, padded, out_hw)
        u = self._call((padded // block, 4, 4, inp_shape[3], block), dtype, winograd.winograd_filter, [w], _shape(w),
                       dtype, padded, block, flipped)
        return self._conv_nchw(winograd.winograd_conv, (inp_shape, padded, out_hw, dtype, self.isa), [inp, u],
                               (inp_shape[0], channels, *out_hw), padded, dtype, role)

    def _conv_nchw(self, make, args, inputs, out_shape, padded, dtype, role):
        """``make(*args, channels_first)``'s CONV with its NCHW result ``out_shape``: written so by the kernel itself
        (one pass over memory fewer), unless vector padding to ``padded`` channels left some to drop, which a
        layout kernel does."""
        n, channels, *out_hw = out_shape
        if padded == channels:
            return relax.call_tir(self._kernel(make, *args, True, role=role), inputs, relax.TensorType(out_shape, dtype))
        y = self._call((n, *out_hw, padded), dtype, make, inputs, *args, role=role)
        return relax.call_tir(self._kernel(layout.to_channels_first, (n, *out_hw, padded), dtype, channels), [y],
                              relax.TensorType(out_shape, dtype))

    def _data_grad(self, call):
        dy, w = call.args
        dtype = str(dy.ty.dtype)
        (n, o, _, _), (_, c, kh, kw) = _shape(dy), _shape(w)
        h, wd = _shape(call)[2:]
        top, left, _, _ = _ints(call.attrs.padding)
        stride, dilation = _ints(call.attrs.strides), _ints(call.attrs.dilation)
        before = ((kh - 1) * dilation[0] - top, (kw - 1) * dilation[1] - left)
        hp, wp = h + (kh - 1) * dilation[0], wd + (kw - 1) * dilation[1]
        if stride[0] != stride[1]:
            return call  # the zero-dilation below spaces both axes alike
        cp = self.isa.padded(c, dtype)
        if stride[0] > 1 and dilation == (1, 1):
            return self._data_grad_by_phase(dy, w, (h, wd), (top, left), stride[0], cp)
        dyp = self._call((n, hp, wp, o), dtype, layout.to_channels_last, [dy], _shape(dy), dtype, (hp, wp), before,
                         stride[0])
        if self._winograd((kh, kw), stride, dilation, (h, wd), o, dtype):
            return self._winograd_nchw(dyp, w, (n, hp, wp, o), (h, wd), c, cp, dtype, True, "conv_dgrad")
        block = direct.weight_tile(self.isa, dtype, cp, wd)
        wf = self._call((cp // block, kh, kw, o, block), dtype, layout.filter_to_flipped_hwoi, [w], _shape(w), dtype, cp,
                        block)
        return self._conv_nchw(direct.direct_conv, ((n, hp, wp, o), (kh, kw, o, cp), (1, 1), dilation, (h, wd), dtype,
                                                    self.isa), [dyp, wf], (n, c, h, wd), cp, dtype, "conv_dgrad")

    def _data_grad_by_phase(self, dy, w, out_hw, pads, stride, cp):
        """A stride-S dgrad as S x S stride-1 CONVs, one per output phase (phases.py), interleaved into dX."""
        dtype = str(dy.ty.dtype)
        (n, o, _, _), (_, c, kh, kw) = _shape(dy), _shape(w)
        outputs, shapes = [], []
        for rows in phases.axis_phases(out_hw[0], kh, stride, pads[0]):
            for cols in phases.axis_phases(out_hw[1], kw, stride, pads[1]):
                if not rows.taps or not cols.taps or not rows.size or not cols.size:
                    shapes.append(None)
                    continue
                window = (rows.size + rows.taps - 1, cols.size + cols.taps - 1)
                dyp = self._call((n, *window, o), dtype, layout.to_channels_last, [dy], _shape(dy), dtype, window,
                                 (rows.before, cols.before))
                block = direct.weight_tile(self.isa, dtype, cp, cols.size)
                wf = self._call((cp // block, rows.taps, cols.taps, o, block), dtype, phases.filter_phase, [w], _shape(w),
                                dtype, rows, cols, stride, cp, block)
                shape = (n, rows.size, cols.size, cp)
                outputs.append(self._call(shape, dtype, direct.direct_conv, [dyp, wf], (n, *window, o),
                                          (rows.taps, cols.taps, o, cp), (1, 1), (1, 1), shape[1:3], dtype, self.isa,
                                          role="conv_dgrad"))
                shapes.append(shape)
        return relax.call_tir(self._kernel(phases.interleave_phases, tuple(shapes), dtype, stride, c, out_hw), outputs,
                              relax.TensorType((n, c, *out_hw), dtype))

    def _matmul(self, call):
        a, b = call.args
        dtype = str(a.ty.dtype)
        (m, _), (k, n) = _shape(a), _shape(b)
        npad = self.isa.padded(n, dtype)
        block = matmul.column_tile(self.isa, dtype, npad, m)
        packed = self._call((npad // block, k, block), dtype, layout.pack_columns, [b], (k, n), dtype, npad, block)
        product = relax.call_tir(self._kernel(matmul.matmul, (m, k), (k, npad), dtype, self.isa), [a, packed],
                                 relax.TensorType((m, npad), dtype))
        if npad == n:
            return product
        return relax.call_tir(self._kernel(layout.first_columns, (m, npad), dtype, n), [self.builder_.emit(product)],
                              relax.TensorType((m, n), dtype))

    def _weight_grad(self, call, kernel_hw):
        x, dy = call.args
        dtype = str(x.ty.dtype)
        (n, c, _, _), (_, o, oh, ow) = _shape(x), _shape(dy)
        kh, kw = kernel_hw
        dilation, stride = _ints(call.attrs.strides), _ints(call.attrs.dilation)  # swapped in the wgrad form
        xp, (hp, wp), stride = self._input_window(x, (oh, ow), (kh, kw), stride, dilation, call.attrs.padding)
        if self._winograd_wgrad((kh, kw), stride, dilation, (oh, ow), c, o, dtype):
            return self._winograd_weight_grad(xp, dy, (n, hp, wp, c), (n, oh, ow, o), dtype)
        tiling = wgrad.plan(self.isa, dtype, o, c)
        op, block = tiling.out_channels, tiling.dy_block
        dyn = self._call((op // block, n, oh, ow, block), dtype, layout.to_channel_tiles, [dy], _shape(dy), dtype, op, block)
        geometry = ((n, hp, wp, c), (n, oh, ow, op), (kh, kw), stride, dilation, dtype, tiling)
        if op == o and wgrad.tile_in_registers(geometry[1]):  # the kernel writes ONNX's layout itself
            return relax.call_tir(self._kernel(wgrad.weight_grad, *geometry, True, role="conv_wgrad"), [xp, dyn],
                                  relax.TensorType((o, c, kh, kw), dtype))
        grad_shape = tiling.grad_shape((kh, kw), c)
        dw = self._call(grad_shape, dtype, wgrad.weight_grad, [xp, dyn], *geometry, role="conv_wgrad")
        return relax.call_tir(self._kernel(layout.filter_from_tiles, grad_shape, dtype, o, tiling.by_input_channel), [dw],
                              relax.TensorType((o, c, kh, kw), dtype))

    def _winograd_wgrad(self, kernel_hw, stride, dilation, out_hw, in_channels, out_channels, dtype):
        """Whether a weight gradient runs as Winograd: its geometry allows it, X's channels fill whole vectors (its
        GEMMs broadcast them in blocks) and dY's channels, padded with zeros to whole vectors (a skeleton's k), grow
        by at most WINOGRAD_WGRAD_MAX_PADDING: resnet18's r = 0.1 skeleton wgrads 128@16, 256@8, 512@4 went from
        1.28-1.81x oneDNN's time to 0.70-1.03x, r = 0.3's 128@16 - 512@4 from 1.02-1.45x to 0.56-0.79x."""
        return (winograd.applies(kernel_hw, stride, dilation, out_hw) and in_channels % self.isa.lanes(dtype) == 0
                and self.isa.padded(out_channels, dtype) <= WINOGRAD_WGRAD_MAX_PADDING * out_channels)

    def _winograd_weight_grad(self, xp, dy, inp_shape, dy_shape, dtype):
        """winograd_wgrad.weight_grad of X (padded NHWC ``xp``) and dY (NCHW), dY's channels padded to whole vectors:
        [3, 3, C, O'], then OIHW without the padding."""
        c, o = inp_shape[3], dy_shape[3]
        op = self.isa.padded(o, dtype)
        padded_shape = (*dy_shape[:3], op)
        tiling = winograd_wgrad.plan(self.isa, dtype, padded_shape, c)
        block = tiling.dy_block
        dyn = self._call((op // block, *dy_shape[:3], block), dtype, layout.to_channel_tiles, [dy], _shape(dy), dtype,
                         op, block)
        grad_shape = (3, 3, c, op)
        dw = self._call(grad_shape, dtype, winograd_wgrad.weight_grad, [xp, dyn], inp_shape, padded_shape, dtype, tiling,
                        role="conv_wgrad")
        return relax.call_tir(self._kernel(layout.filter_from_tiles, grad_shape, dtype, o, False), [dw],
                              relax.TensorType((o, c, 3, 3), dtype))


def _sliced_wgrads(func):
    """wgrad CONV vars whose only use is a slice to the layer's R x S (stride leftovers): var -> (R, S)."""
    bound = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    sliced = {}
    for value in bound.values():
        if _is_op(value, "relax.strided_slice") and isinstance(value.args[0], relax.Var):
            conv = bound.get(value.args[0])
            if conv is not None and conv_kind(conv) == WGRAD and _starts_at_origin(value):
                sliced[value.args[0]] = _shape(value)[2:]
    return sliced


def _starts_at_origin(slice_call):
    """A slice of the trailing R x S taps from 0 that keeps the channel axes whole (conv_gradient's form)."""
    begin = slice_call.args[2]
    if not isinstance(begin, relax.Tuple):
        return False
    source, result = _shape(slice_call.args[0]), _shape(slice_call)
    return not any(int(field.value) for field in begin.fields) and source[:2] == result[:2]
