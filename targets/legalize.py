"""The lowering of the Relax ops whose TVM legalization differs from torch: every pipeline (CPU, CUDA, tuning)
legalizes through ``legalize_ops`` so the kernels it tunes are the kernels it builds.

ReLU: TVM's ``max(x, 0)`` lowers to ``x > 0 ? x : 0``, which turns NaN into 0.  A diverged step then trains on
silently: a Winograd input transform makes NaN of inf - inf, ReLU zeroed it, and the loss stayed finite where
torch's is NaN.  ``x < 0 ? 0 : x`` keeps NaN, as torch.relu does.
"""

from tvm import relax, te, tirx


def _relu(bb, call):
    def relu(x):
        return te.compute(x.shape, lambda *i: tirx.Select(x(*i) < 0, tirx.const(0, x.dtype), x(*i)), name="relu")

    return bb.call_te(relu, call.args[0], primfunc_name_hint="relu")


LEGALIZE_MAP = {"relax.nn.relu": _relu}


def legalize_ops():
    """relax.transform.LegalizeOps with LEGALIZE_MAP."""
    return relax.transform.LegalizeOps(customize_legalize_map=LEGALIZE_MAP)


def with_our_legalization(passes):
    """``passes`` (a backend's pass list) with its LegalizeOps replaced by ``legalize_ops()``."""
    return [legalize_ops() if step.info.name == "LegalizeOps" else step for step in passes]
