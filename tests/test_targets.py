"""The target registry: what each named target builds, and the errors for targets that cannot be built here."""

import json
import os
import struct
import subprocess
import sys

import pytest
import tvm
from tvm.target import codegen

from fedskel.runtime import ArtifactError, load
from fedskel.runtime.artifact import LIBRARY, read_artifact
from fedskel.targets import TargetError, TargetSpec, available, get_target

from conftest import require_toolchain

EM_X86_64, EM_AARCH64 = 62, 183
ARM_BOARDS = {"rpi4": "cortex-a72", "rk3399": "cortex-a72", "jetson-orin-cpu": "cortex-a78ae"}


def elf_machine(library):
    """e_machine of a 64-bit little-endian ELF shared object."""
    assert library[:4] == b"\x7fELF" and library[4] == 2 and library[5] == 1, "not a 64-bit little-endian ELF"
    return struct.unpack_from("<H", library, 18)[0]


def library_of(path):
    return read_artifact(path)[1][LIBRARY]


def fedskel_compile(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fedskel.compiler.cli", *map(str, args)], capture_output=True, text=True, env=env)


# ---- the registry ----------------------------------------------------------------------------
def test_named_targets_and_what_they_run_on():
    specs = available()
    assert set(specs) >= {"host", "x86_64", "arm64", "rpi4", "rk3399", "jetson-orin-cpu", "cuda", "jetson-orin"}
    for name in ["arm64", *ARM_BOARDS]:
        spec = specs[name]
        assert (spec.machine, spec.device, spec.cross_compiler) == ("aarch64", "cpu", "aarch64-linux-gnu-gcc")
        assert spec.tvm_target["mtriple"] == "aarch64-linux-gnu" and "+neon" in spec.tvm_target["mattr"]
    assert (specs["cuda"].machine, specs["cuda"].device, specs["cuda"].tvm_target["arch"]) == ("x86_64", "cuda", "sm_80")
    orin = specs["jetson-orin"]
    assert (orin.machine, orin.device, orin.tvm_target["arch"]) == ("aarch64", "cuda", "sm_87")
    assert orin.tvm_target["host"]["mcpu"] == "cortex-a78ae" and orin.cross_compiler == "aarch64-linux-gnu-gcc"


@pytest.mark.parametrize("board", sorted(ARM_BOARDS))
def test_board_cpus_are_known_to_tvms_llvm(board):
    cpu = ARM_BOARDS[board]
    assert codegen.llvm_is_valid_cpu(cpu, "aarch64-linux-gnu")
    target = get_target(board).tvm()
    assert str(target.attrs["mcpu"]) == cpu and "arm_cpu" in [str(k) for k in target.keys]


def test_every_named_target_makes_a_tvm_target():
    for name, spec in available().items():
        target = spec.tvm()
        assert str(target.kind.name) == spec.tvm_target["kind"], name
        if spec.device == "cuda":
            assert str(target.host.attrs["mtriple"]).startswith({"aarch64": "aarch64", "x86_64": "x86_64"}[spec.machine])


def test_cuda_arch_option():
    spec = get_target("cuda:sm_90")
    assert spec.name == "cuda:sm_90" and spec.device == "cuda"
    assert str(spec.tvm().attrs["arch"]) == "sm_90"
    assert get_target("jetson-orin:sm_72").tvm_target["arch"] == "sm_72"


def test_a_tvm_json_target_is_accepted():
    spec = get_target(json.dumps({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"}))
    assert (spec.name, spec.machine, spec.device, spec.cross_compiler) == ("custom", "aarch64", "cpu", "aarch64-linux-gnu-gcc")
    gpu = get_target(json.dumps({"kind": "cuda", "arch": "sm_75", "host": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}}))
    assert (gpu.machine, gpu.device, gpu.cross_compiler) == ("x86_64", "cuda", None)
    assert str(gpu.tvm().attrs["arch"]) == "sm_75"


# ---- errors that name the fix ----------------------------------------------------------------
@pytest.mark.parametrize(
    "name, message",
    [
        ("pdp11", "unknown target 'pdp11'; known targets: arm64, cuda"),
        ("arm64:sm_90", "only a CUDA target takes an option"),
        ("cuda:volta", "an arch like sm_90"),
        ("{kind: llvm}", "not valid JSON"),
        ('{"mtriple": "aarch64-linux-gnu"}', 'must be an object with a "kind"'),
        ('{"kind": "vulkan"}', "runs llvm (cpu) and cuda targets only"),
        ('{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}', "supported CPUs are x86_64, aarch64"),
        ('{"kind": "cuda", "host": "llvm"}', '"host" must be an object'),
    ],
)
def test_bad_target_names(name, message):
    with pytest.raises(TargetError) as error:
        get_target(name)
    assert message in str(error.value)


def test_unknown_cpu_is_refused_not_silently_generic():
    spec = get_target(json.dumps({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a99"}))
    with pytest.raises(TargetError, match="does not know mcpu 'cortex-a99' for aarch64-linux-gnu"):
        spec.tvm()


def test_a_kind_this_tvm_cannot_generate():
    assert tvm.get_global_func("target.build.vulkan", allow_missing=True) is None  # this wheel is built without Vulkan
    spec = TargetSpec("vk", "a Vulkan GPU", {"kind": "vulkan"}, machine="x86_64", device="vulkan")
    with pytest.raises(TargetError, match="this TVM build cannot generate code for kind 'vulkan'"):
        spec.tvm()


def test_missing_cross_compiler_names_the_package(tmp_path):
    # a PATH without aarch64-linux-gnu-gcc: the compile stops before linking, naming the Debian package
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    result = fedskel_compile("lenet5", "--target", "rpi4", "--batch-size", "2", "-o", tmp_path / "a.fsk", env=env)
    assert result.returncode == 2
    assert "aarch64-linux-gnu-gcc, which is not installed: apt-get install gcc-aarch64-linux-gnu" in result.stderr
    assert not (tmp_path / "a.fsk").exists()


def test_list_targets_shows_every_target_with_its_machine_and_device():
    result = fedskel_compile("--list-targets")
    assert result.returncode == 0
    rows = {line.split()[0]: line.split()[1:3] for line in result.stdout.splitlines() if not line.startswith("also:")}
    assert rows == {name: [spec.machine, spec.device] for name, spec in available().items()}
    assert "cuda:sm_XX" in result.stdout and "JSON" in result.stdout


# ---- real cross-compiles ---------------------------------------------------------------------
def test_arm64_artifact_is_an_aarch64_library_refused_on_x86(artifact):
    require_toolchain("arm64")
    path = artifact("lenet5", ratio=0.25, batch_size=4, target="arm64")
    assert elf_machine(library_of(path)) == EM_AARCH64
    manifest = read_artifact(path)[0]
    assert manifest["target"] == {
        "name": "arm64", "tvm_target": get_target("arm64").tvm_target, "machine": "aarch64", "device": "cpu"
    }
    if os.uname().machine != "aarch64":
        with pytest.raises(ArtifactError, match="built for target arm64 \\(aarch64\\); this machine is"):
            load(path)


def test_cuda_artifact_builds_without_a_gpu_and_carries_cuda_kernels(artifact):
    path = artifact("lenet5", ratio=0.25, batch_size=4, target="cuda")
    library = library_of(path)
    assert elf_machine(library) == EM_X86_64  # the host side
    assert library.count(b'extern "C" __global__') > 10  # CUDA C source, compiled by NVRTC/nvcc when loaded on a GPU
    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present here: the no-GPU refusal cannot be shown")
    with pytest.raises(ArtifactError, match="built for a cuda device, and none is available here"):
        load(path)


@pytest.mark.slow
def test_jetson_orin_artifact_is_aarch64_with_cuda_kernels(artifact):
    require_toolchain("jetson-orin")
    library = library_of(artifact("lenet5", ratio=0.25, batch_size=4, target="jetson-orin"))
    assert elf_machine(library) == EM_AARCH64
    assert library.count(b'extern "C" __global__') > 10
