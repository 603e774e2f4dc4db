"""The k-channel backward of one CONV layer, as Relax expressions (FEDSKEL.md's UpdateSkel form).

For Y = conv2d(X, W) (+ b) and an index vector idx of static length k:
    dY_k = take(dY, idx, axis=1)                          the skeleton's slice of the output gradient
    dW   = rows idx <- weight_grad(X, dY_k)               (other rows 0)
    db   = entries idx <- sum(dY_k over N, H, W)          (other entries 0)
    dX   = data_grad(dY_k, take(W, idx, axis=0))          (flows only through the skeleton filters)
which is autograd with dY zeroed outside idx, at k/Cout of the FLOPs.  The k rows reach the full-size dW and
db by a gather: for each of the Cout filters its place in idx (``positions``), then take + where, which TVM
fuses into one parallel kernel; scatter_nd into zeros lowers to a serial loop (13% of resnet18's r = 0.1
step at two threads).  The runtime has checked that idx holds k distinct channels.  Grouped CONVs: a selected filter o
reads input group o // (Cout/g), so the k filters form a k-group CONV over the gathered input channels,
and dX is scatter-added back (several selected filters may share an input group).

Used by the skeleton pass on whole training graphs and by bench/ on single layers: one implementation.
"""

from tvm import relax
from tvm.relax.op import (add, arange, floor_divide, full, less, minimum, multiply, permute_dims, reshape, scatter_nd, take,
                          where, zeros)
from tvm.relax.op import sum as reduce_sum

from .conv_gradient import conv2d_data_grad, conv2d_weight_grad, static_shape


class SkeletonBackward:
    """Builds dW, db and dX of one CONV layer on k channels; shared pieces are emitted once."""

    def __init__(self, emit, x, weight, dy, idx, attrs):
        self.emit = emit  # BlockBuilder.emit: binds an expression, returns its var
        self.x, self.weight, self.dy, self.idx, self.attrs = x, weight, dy, idx, attrs
        self.k = static_shape(idx)[0]
        self.groups = int(attrs.groups)
        self.out_channels = static_shape(weight)[0]
        self.dtype = weight.ty.dtype  # of the zeros the k-channel results are scattered into
        self._memo = {}

    def _once(self, name, make):
        if name not in self._memo:
            self._memo[name] = self.emit(make())
        return self._memo[name]

    @property
    def rows(self):
        return self._once("rows", lambda: reshape(self.idx, (self.k, 1)))

    @property
    def dy_k(self):
        return self._once("dy_k", lambda: take(self.dy, self.idx, axis=1))

    @property
    def input_channels(self):
        """Input channels read by each selected filter: group(o) * Cin/g + [0, Cin/g)."""

        def make():
            out_per_group = self.out_channels // self.groups
            in_per_group = static_shape(self.x)[1] // self.groups
            group = floor_divide(self.idx, relax.const(out_per_group, "int64"))
            first = multiply(reshape(group, (self.k, 1)), relax.const(in_per_group, "int64"))
            span = reshape(arange(0, in_per_group, 1, "int64"), (1, in_per_group))
            return reshape(add(first, span), (self.k * in_per_group,))

        return self._once("input_channels", make)

    @property
    def positions(self):
        """Per filter o, its place j in idx (idx[j] = o), or k where o is not in the skeleton."""

        def make():
            k = relax.const(self.k, "int64")
            return scatter_nd(full((self.out_channels,), k, "int64"), self.rows, arange(0, self.k, 1, "int64"))

        return self._once("positions", make)

    def _to_full_rows(self, values_k):
        """The k-row tensor ``values_k`` (row j belongs to filter idx[j]) as Cout rows, zero outside idx."""
        rank = len(static_shape(values_k))
        last = relax.const(self.k - 1, "int64")
        in_skeleton = self._once("in_skeleton", lambda: less(self.positions, relax.const(self.k, "int64")))
        mask = reshape(in_skeleton, (self.out_channels,) + (1,) * (rank - 1))
        rows = take(values_k, minimum(self.positions, last), axis=0)
        return where(mask, rows, zeros((1,) * rank, self.dtype))

    @property
    def skeleton_groups(self):
        return 1 if self.groups == 1 else self.k

    def bias_grad(self):
        return self._to_full_rows(self.emit(reduce_sum(self.dy_k, axis=[0, 2, 3])))

    def weight_grad(self):
        data = self.x if self.groups == 1 else self.emit(take(self.x, self.input_channels, axis=1))
        filter_hw = static_shape(self.weight)[2:]
        dw_k = self.emit(conv2d_weight_grad(data, self.dy_k, self.attrs, self.skeleton_groups, filter_hw))
        return self._to_full_rows(dw_k)

    def data_grad(self):
        w_k = self.emit(take(self.weight, self.idx, axis=0))
        x_shape = static_shape(self.x)
        dx = conv2d_data_grad(self.dy_k, w_k, self.attrs, self.skeleton_groups, x_shape[2:])
        if self.groups == 1:
            return dx
        n, c, h, w = x_shape
        selected = self.k * (c // self.groups)
        rows = self.emit(permute_dims(self.emit(dx), [1, 0, 2, 3]))
        summed = self.emit(scatter_nd(zeros((c, n, h, w), self.dtype), reshape(self.input_channels, (selected, 1)), rows, "add"))
        return permute_dims(summed, [1, 0, 2, 3])
