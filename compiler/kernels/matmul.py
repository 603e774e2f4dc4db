"""The dense layers' matmul (forward, dX and dW of Gemm/MatMul): C[i, j] = sum_k A[i, k] * B[k, j].

TVM 0.27's CPU lowering of ``relax.matmul`` is an unscheduled loop nest; on lenet5 its three FC matmuls
took most of the step.  This is the NHWC CONV's schedule with a 1x1 window: ``pixels`` rows of A
broadcast x ``vectors`` vectors of B's columns, the whole k reduction in registers, one parallel task
per (row tile, column tile).  B comes packed by column tile T ([N/T, K, T], layout.pack_columns), its
columns padded to a multiple of the lanes, so each tile streams contiguous memory over k.
"""

from tvm import s_tir, te

from .schedule import accumulate_in_registers, parallel_outer, scheduled, split_channels
from .tiles import conv_tile


def column_tile(isa, dtype, columns, rows):
    """T: the columns of the register tile, by which the caller packs B."""
    return conv_tile(isa, dtype, columns, rows).channels


def matmul(a_shape, b_shape, dtype, isa):
    """PrimFunc(A [M, K], B [N/T, K, T]) -> C [M, N], scheduled for ``isa``; ``b_shape`` is the logical [K, N]."""
    m_, k_ = a_shape
    _, n_ = b_shape
    tile = conv_tile(isa, dtype, n_, m_)
    block = tile.channels
    a = te.placeholder(a_shape, dtype, name="a")
    b = te.placeholder((n_ // block, k_, block), dtype, name="b")
    k = te.reduce_axis((0, k_), "k")
    c = te.compute((m_, n_), lambda i, j: te.sum(a[i, k] * b[j // block, k, j % block], axis=[k]), name="matmul")
    return _schedule(te.create_prim_func([a, b, c]), tile)


def _schedule(func, tile):
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("matmul")
    i, j, k = sch.get_loops(block)
    i_outer, i_tile = sch.split(i, [None, tile.pixels])
    j_outer, j_vectors, j_lanes = split_channels(sch, j, tile)
    sch.reorder(i_outer, j_outer, k, i_tile, j_vectors, j_lanes)
    tiles = parallel_outer(sch, [i_outer, j_outer])
    sch.unroll(i_tile)
    sch.unroll(j_vectors)
    sch.vectorize(j_lanes)
    accumulate_in_registers(sch, block, tiles, k)
    return scheduled(sch)
