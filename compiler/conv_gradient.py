"""The backward of ``relax.nn.conv2d``, written once and used twice.

TVM 0.27's registered conv2d gradient computes ``output_padding`` from the filter size instead of the
*dilated* filter size, so ``Gradient`` fails on any dilated CONV.  We register a corrected gradient at a
higher level, and the skeleton pass builds its k-channel backward from the same two helpers, so the full
and the skeleton backward can never disagree on strides, padding or layouts.
"""

from tvm.relax.op import permute_dims, reshape, strided_slice
from tvm.relax.op.nn import conv2d, conv2d_transpose
from tvm.relax.op.base import register_gradient


def static_shape(expr):
    """The static shape of a tensor expression as Python ints."""
    return [int(dim) for dim in expr.ty.shape]


def _geometry(attrs):
    """(padding, strides, dilation) of a conv2d call as Python ints: top, left, bottom, right; h, w; h, w."""
    return tuple(tuple(int(v) for v in values) for values in (attrs.padding, attrs.strides, attrs.dilation))


def conv2d_data_grad(dy, weight, attrs, groups, in_hw):
    """dX of a NCHW/OIHW conv: a transposed conv of dY with the (possibly sliced) weight."""
    _, _, grad_h, grad_w = static_shape(dy)
    _, _, filter_h, filter_w = static_shape(weight)
    (pad_top, pad_left, pad_bottom, pad_right), (stride_h, stride_w), (dilation_h, dilation_w) = _geometry(attrs)
    out_h = (grad_h - 1) * stride_h - pad_top - pad_bottom + dilation_h * (filter_h - 1) + 1
    out_w = (grad_w - 1) * stride_w - pad_left - pad_right + dilation_w * (filter_w - 1) + 1
    return conv2d_transpose(
        dy,
        weight,
        strides=attrs.strides,
        padding=attrs.padding,
        output_padding=(in_hw[0] - out_h, in_hw[1] - out_w),
        dilation=attrs.dilation,
        groups=groups,
        data_layout="NCHW",
        kernel_layout="IOHW",
        out_layout="NCHW",
        out_dtype=attrs.out_dtype,
    )


def conv2d_weight_grad(data, dy, attrs, groups, filter_hw):
    """dW of a NCHW/OIHW conv, shaped [Cout_of_dy, Cin/groups, kh, kw].

    The correlation of X with dY is itself a conv (stride and dilation swap roles); for groups > 1 the
    batch is folded into the channel axis so each group correlates only with its own input channels.
    """
    batch, in_channel, in_h, in_w = static_shape(data)
    _, out_channel, grad_h, grad_w = static_shape(dy)
    if groups != 1:
        data = reshape(data, (batch, groups, in_channel // groups, in_h, in_w))
        data = permute_dims(data, [1, 0, 2, 3, 4])
        data = reshape(data, (groups * batch, in_channel // groups, in_h, in_w))
    grad = conv2d(
        data,
        dy,
        strides=attrs.dilation,
        padding=attrs.padding,
        dilation=attrs.strides,
        groups=groups,
        data_layout="CNHW",
        kernel_layout="IOHW",
        out_layout="CNHW",
        out_dtype=attrs.out_dtype,
    )
    (pad_top, pad_left, pad_bottom, pad_right), (stride_h, stride_w), (dilation_h, dilation_w) = _geometry(attrs)
    grad_kh = (in_h + pad_top + pad_bottom - (grad_h - 1) * stride_h - 1) // dilation_h + 1
    grad_kw = (in_w + pad_left + pad_right - (grad_w - 1) * stride_w - 1) // dilation_w + 1
    if (grad_kh, grad_kw) != tuple(filter_hw):
        grad = strided_slice(
            grad,
            axes=[0, 1, 2, 3],
            begin=[0, 0, 0, 0],
            end=[out_channel, in_channel // groups, filter_hw[0], filter_hw[1]],
        )
    return grad


def _conv2d_grad(orig_var, orig_call, output_grad, ctx):
    attrs = orig_call.attrs
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        raise ValueError(f"conv2d gradient supports NCHW/OIHW only, got {attrs.data_layout}/{attrs.kernel_layout}")
    data, weight = orig_call.args
    groups = int(attrs.groups)
    in_hw = static_shape(data)[2:]
    filter_hw = static_shape(weight)[2:]
    return [
        conv2d_data_grad(output_grad, weight, attrs, groups, in_hw),
        conv2d_weight_grad(data, output_grad, attrs, groups, filter_hw),
    ]


# Importing this module installs the corrected gradient; level 20 outranks TVM's own (level 10).
register_gradient("relax.nn.conv2d", _conv2d_grad, level=20)
