"""One CONV layer's three training ops as a Relax module, built the way the training graph builds them.

``forward(x, w) -> y``, ``dgrad(dy, w) -> dX`` and ``wgrad(x, dy) -> dW`` from conv_gradient.py: what the
kernel tests check against torch and what bench/conv_kernels.py times against oneDNN, layer by layer.
"""

from tvm import relax

from ..conv_gradient import conv2d_data_grad, conv2d_weight_grad


def conv_output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def single_conv_module(batch, in_channels, out_channels, size, kernel, stride, padding, dilation, dtype):
    """(module, dY's shape) for a square CONV; the skeleton form of a layer is this with k output channels."""

    def var(name, shape):
        return relax.Var(name, relax.TensorType(shape, dtype))

    x_shape, w_shape = (batch, in_channels, size, size), (out_channels, in_channels, kernel, kernel)
    geometry = {"strides": stride, "padding": padding, "dilation": dilation}
    attrs = relax.op.nn.conv2d(var("x", x_shape), var("w", w_shape), **geometry).attrs
    out = conv_output_size(size, kernel, stride, padding, dilation)
    dy_shape = (batch, out_channels, out, out)
    bb = relax.BlockBuilder()
    for name, shapes, make in [
        ("forward", [x_shape, w_shape], lambda x, w: relax.op.nn.conv2d(x, w, **geometry)),
        ("dgrad", [dy_shape, w_shape], lambda dy, w: conv2d_data_grad(dy, w, attrs, 1, (size, size))),
        ("wgrad", [x_shape, dy_shape], lambda x, dy: conv2d_weight_grad(x, dy, attrs, 1, (kernel, kernel))),
    ]:
        params = [var(f"arg{i}", shape) for i, shape in enumerate(shapes)]
        with bb.function(name, params):
            with bb.dataflow():
                result = bb.emit_output(make(*params))
            bb.emit_func_output(result)
    return bb.get(), dy_shape
