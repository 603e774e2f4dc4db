"""How MetaSchedule builds tuning candidates: in worker processes, as a .so the device can load as it is.

These functions run in MetaSchedule's builder workers, a fresh process pool every tuning round. Its default
build imports ``tvm.s_tir.tensor_intrin``, which registers every CUDA/ROCm/Arm tensor intrinsic and takes
40-60 s on this 2-core machine, every round; the candidates arrive already scheduled (any tensorization is
applied when the schedule is, in the tuning process), so building them needs none of that.
"""

import functools
import os
import tempfile

from tvm.s_tir import meta_schedule as ms


def candidate_builder(linker):
    """A LocalBuilder with the light build below and a shared-library export linked by ``linker``."""
    return ms.builder.LocalBuilder(f_build=build_candidate, f_export=functools.partial(export_candidate, linker))


def build_candidate(mod, target, _params):
    """MetaSchedule's default_build without the tensor-intrinsic import."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def export_candidate(linker, runtime_module):
    """A candidate as a linked .so: the default .tar would need a compiler on the device to link it there."""
    path = os.path.join(tempfile.mkdtemp(prefix="fedskel-candidate-"), "candidate.so")
    runtime_module.export_library(path, fcompile=linker)
    return path
