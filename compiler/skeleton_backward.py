"""The k-channel backward of one CONV layer, as Relax expressions (FEDSKEL.md's UpdateSkel form).

For Y = conv2d(X, W) (+ b) and an index vector idx of static length k:
    dY_k = take(dY, idx, axis=1)                          the skeleton's slice of the output gradient
    dW   = scatter rows idx <- weight_grad(X, dY_k)       (other rows 0)
    db   = scatter idx <- sum(dY_k over N, H, W)          (other entries 0)
    dX   = data_grad(dY_k, take(W, idx, axis=0))          (flows only through the skeleton filters)
which is autograd with dY zeroed outside idx, at k/Cout of the FLOPs.  Grouped CONVs: a selected filter o
reads input group o // (Cout/g), so the k filters form a k-group CONV over the gathered input channels,
and dX is scatter-added back (several selected filters may share an input group).

Used by the skeleton pass on whole training graphs and by bench/ on single layers: one implementation.
"""

from tvm import relax
from tvm.relax.op import add, arange, floor_divide, multiply, permute_dims, reshape, scatter_nd, take, zeros
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
    def skeleton_groups(self):
        return 1 if self.groups == 1 else self.k

    def bias_grad(self):
        return scatter_nd(zeros((self.out_channels,), self.dtype), self.rows, reduce_sum(self.dy_k, axis=[0, 2, 3]))

    def weight_grad(self):
        data = self.x if self.groups == 1 else self.emit(take(self.x, self.input_channels, axis=1))
        filter_hw = static_shape(self.weight)[2:]
        dw_k = self.emit(conv2d_weight_grad(data, self.dy_k, self.attrs, self.skeleton_groups, filter_hw))
        return scatter_nd(zeros(static_shape(self.weight), self.dtype), self.rows, dw_k)

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
