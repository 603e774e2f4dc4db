"""Layout kernels at the edges of the NHWC CONVs: NCHW <-> NHWC, with padding folded in.

Each is one TE compute with a parallel schedule, so a CONV's input is padded, zero-dilated (stride-2 dgrad)
and made channels-last in a single pass over memory; a CONV writes its NCHW output itself (direct.py) unless
vector padding left channels to drop, which ``to_channels_first`` does in one more pass.  The public layout
(ONNX's NCHW activations, OIHW weights) is untouched outside these kernels.
"""

from tvm import s_tir, te, tirx

from .schedule import parallel_copy, parallel_outer, scheduled


def clamp(index, extent):
    return tirx.max(tirx.min(index, extent - 1), 0)


def _source_index(i, before, dilate, step, extent):
    """(in range, index) of position ``i`` of a padded, ``dilate``-spaced, ``step``-subsampled axis of ``extent``."""
    shifted = i * step - before
    index = tirx.floordiv(shifted, dilate)
    inside = tirx.all(shifted >= 0, tirx.floormod(shifted, dilate) == 0, index < extent)
    return inside, clamp(index, extent)


def to_channels_last(src_shape, dtype, out_hw, before_hw, dilate=1, step=1):
    """PrimFunc(src [N, C, H, W]) -> [N, OH, OW, C]: position (h, w) holds src[n, c, (h*step - before) / dilate,
    (w*step - before) / dilate] where that is a whole index in range, else 0.

    ``dilate`` spaces the source out (a dilated strided dgrad's zero-dilation), ``step`` keeps every step-th
    pixel (all a strided 1x1 CONV reads), ``before`` pads (the CONV's padding) or, negative, crops."""
    n_, c_, h_, w_ = src_shape
    src = te.placeholder(src_shape, dtype, name="src")

    def value(n, h, w, c):
        h_in, h_index = _source_index(h, before_hw[0], dilate, step, h_)
        w_in, w_index = _source_index(w, before_hw[1], dilate, step, w_)
        return tirx.if_then_else(tirx.all(h_in, w_in), src[n, c, h_index, w_index], tirx.const(0, dtype))

    out = te.compute((n_, *out_hw, c_), value, name="to_nhwc")
    return _transposed(te.create_prim_func([src, out]), "to_nhwc", lambda n, h, w, c: (n, h, w, c))


def to_channel_tiles(src_shape, dtype, out_channels, block):
    """PrimFunc(src [N, C, H, W]) -> [C'/T, N, H, W, T]: channels-last within tiles of T channels (wgrad.py's
    dY), channels C..C' zero."""
    n_, c_, h_, w_ = src_shape
    src = te.placeholder(src_shape, dtype, name="src")

    def value(cb, n, h, w, t):
        c = cb * block + t
        return tirx.if_then_else(c < c_, src[n, clamp(c, c_), h, w], tirx.const(0, dtype))

    out = te.compute((out_channels // block, n_, h_, w_, block), value, name="to_tiles")

    def order(sch, cb, n, h, w, t):  # LINE x LINE blocks of (channel, pixel): 3.7 -> 0.8 ms on a cold 8 MB dY
        w_outer, w_inner = sch.split(w, [None, LINE])
        t_outer, t_inner = sch.split(t, [None, LINE])
        return cb, n, h, w_outer, t_outer, t_inner, w_inner

    return _copy_in_order(te.create_prim_func([src, out]), "to_tiles", order, 3)


def to_channels_first(src_shape, dtype, channels):
    """PrimFunc(src [N, H, W, C']) -> [N, C, H, W], the first ``channels`` of C' (vector padding dropped)."""
    n_, h_, w_, _ = src_shape
    src = te.placeholder(src_shape, dtype, name="src")
    out = te.compute((n_, channels, h_, w_), lambda n, c, h, w: src[n, h, w, c], name="to_nchw")
    return _transposed(te.create_prim_func([src, out]), "to_nchw", lambda n, c, h, w: (n, h, c, w))


def filter_to_hwio(weight_shape, dtype, out_channels, block):
    """PrimFunc(W [O, C, R, S]) -> [O'/T, R, S, C, T]: the forward's weights packed by output-channel tile T
    (direct.py), output channels padded to O'."""
    o_, c_, r_, s_ = weight_shape
    weight = te.placeholder(weight_shape, dtype, name="weight")

    def value(ob, r, s, c, t):
        o = ob * block + t
        return tirx.if_then_else(o < o_, weight[clamp(o, o_), c, r, s], tirx.const(0, dtype))

    out = te.compute((out_channels // block, r_, s_, c_, block), value, name="to_hwio")
    # per (tile, c): T source rows of R x S contiguous taps each
    return _copy_in_order(te.create_prim_func([weight, out]), "to_hwio",
                          lambda sch, ob, r, s, c, t: (ob, c, t, r, s), 1)


def filter_to_flipped_hwoi(weight_shape, dtype, in_channels, block):
    """PrimFunc(W [O, C, R, S]) -> [C'/T, R, S, O, T]: W rotated 180 degrees, the dgrad's weights, packed by
    input-channel tile T (C padded to C')."""
    o_, c_, r_, s_ = weight_shape
    weight = te.placeholder(weight_shape, dtype, name="weight")

    def value(cb, r, s, o, t):
        c = cb * block + t
        return tirx.if_then_else(c < c_, weight[o, clamp(c, c_), r_ - 1 - r, s_ - 1 - s], tirx.const(0, dtype))

    out = te.compute((in_channels // block, r_, s_, o_, block), value, name="to_flipped_hwoi")
    # per (tile, o): one contiguous T x R x S block of the source
    return _copy_in_order(te.create_prim_func([weight, out]), "to_flipped_hwoi",
                          lambda sch, cb, r, s, o, t: (cb, o, r, s, t), 2)


def filter_from_tiles(grad_shape, dtype, out_channels, input_channels_last):
    """PrimFunc(dW [R, S, C, O'], or [R, S, O', C] when ``input_channels_last`` (wgrad.Plan.grad_shape)) -> [O, C,
    R, S]: a weight gradient back in ONNX's layout, the padded output channels dropped."""
    r_, s_ = grad_shape[:2]
    c_ = grad_shape[3] if input_channels_last else grad_shape[2]
    grad = te.placeholder(grad_shape, dtype, name="grad")
    read = (lambda o, c, r, s: grad[r, s, o, c]) if input_channels_last else (lambda o, c, r, s: grad[r, s, c, o])
    out = te.compute((out_channels, c_, r_, s_), read, name="to_oihw")

    def order(sch, o, c, r, s):  # one cache line of the source's last axis at a time, written to LINE output rows
        if input_channels_last:
            c_outer, c_inner = sch.split(c, [None, LINE])
            sch.unroll(c_inner)
            return o, c_outer, r, s, c_inner
        o_outer, o_inner = sch.split(o, [None, LINE])
        sch.unroll(o_inner)
        return o_outer, c, r, s, o_inner

    return _copy_in_order(te.create_prim_func([grad, out]), "to_oihw", order, 2 if input_channels_last else 1)


BLOCK = 8  # a transpose moves 8 x 8 blocks: both sides touch whole cache lines
LINE = 16  # float32 elements in a 64-byte cache line


def _copy_in_order(func, name, order, parallel):
    """Schedule a repacking: ``order(sch, *loops)`` gives the loop nest that reads the source along its
    contiguous axes (the output's order reads it one element per cache line: 2.5-4 ms -> 0.3-0.6 ms for a
    512x512 3x3 filter); the first ``parallel`` loops of it become one parallel loop."""
    sch = s_tir.Schedule(func)
    loops = order(sch, *sch.get_loops(sch.get_sblock(name)))
    sch.reorder(*loops)
    parallel_outer(sch, list(loops[:parallel]))
    return scheduled(sch)


def _transposed(func, name, order):
    """Schedule an NCHW <-> NHWC copy: parallel over (image, row), 8 x 8 blocks of (W, C) inside.

    ``order`` maps the block's loops to (n, h, the output's second-innermost, its innermost)."""

    def blocked(sch, *loops):
        n, h, slow, fast = order(*loops)
        slow_outer, slow_inner = sch.split(slow, [None, BLOCK])
        fast_outer, fast_inner = sch.split(fast, [None, BLOCK])
        return n, h, slow_outer, fast_outer, slow_inner, fast_inner

    return _copy_in_order(func, name, blocked, 2)


def pack_columns(shape, dtype, columns, block):
    """PrimFunc(B [K, N]) -> [N'/T, K, T]: a matmul's right operand packed by column tile T (matmul.py),
    columns N..N' zero (vector padding)."""
    k_, n_ = shape
    src = te.placeholder(shape, dtype, name="src")

    def value(jb, k, t):
        j = jb * block + t
        return tirx.if_then_else(j < n_, src[k, clamp(j, n_)], tirx.const(0, dtype))

    out = te.compute((columns // block, k_, block), value, name="pack_columns")
    return parallel_copy(te.create_prim_func([src, out]), "pack_columns", 2)


def first_columns(shape, dtype, columns):
    """PrimFunc(C [M, N']) -> [M, N]: a matmul's result without its padding columns."""
    m_, _ = shape
    src = te.placeholder(shape, dtype, name="src")
    out = te.compute((m_, columns), lambda i, j: src[i, j], name="first_columns")
    return parallel_copy(te.create_prim_func([src, out]), "first_columns", 1)
