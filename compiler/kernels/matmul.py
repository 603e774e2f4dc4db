"""The dense layers' matmul (forward, dX and dW of Gemm/MatMul): C[i, j] = sum_k A[i, k] * B[k, j].

TVM 0.27's CPU lowering of ``relax.matmul`` is an unscheduled loop nest; on lenet5 its three FC matmuls
took most of the step.  This is the NHWC CONV's schedule with a 1x1 window: ``pixels`` rows of A
broadcast x ``vectors`` vectors of B's columns, the whole k reduction in registers, one parallel task
per (row tile, column tile).  B's columns are a multiple of the lanes (the caller pads them).
"""

from tvm import s_tir, te

from .schedule import accumulate_in_registers, parallel_outer, scheduled, split_channels
from .tiles import conv_tile


def matmul(a_shape, b_shape, dtype, isa):
    """PrimFunc(A [M, K], B [K, N]) -> C [M, N], scheduled for ``isa``."""
    m_, k_ = a_shape
    _, n_ = b_shape
    a = te.placeholder(a_shape, dtype, name="a")
    b = te.placeholder(b_shape, dtype, name="b")
    k = te.reduce_axis((0, k_), "k")
    c = te.compute((m_, n_), lambda i, j: te.sum(a[i, k] * b[k, j], axis=[k]), name="matmul")
    return _schedule(te.create_prim_func([a, b, c]), conv_tile(isa, dtype, n_, m_))


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
