"""The target registry: what each named target builds, and the errors for targets that cannot be built here."""

import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import tvm
from tvm.target import codegen

from fedskel.runtime import ArtifactError, load
from fedskel.runtime.artifact import LIBRARY, read_artifact
from fedskel.targets import TargetError, TargetSpec, available, choose_linker, get_target
from fedskel.targets.linker import ZIG_GLIBC

EM_X86_64, EM_AARCH64 = 62, 183
ARM_BOARDS = {"rpi4": "cortex-a72", "rk3399": "cortex-a72", "jetson-orin-cpu": "cortex-a78ae"}


def elf_machine(library):
    """e_machine of a 64-bit little-endian ELF shared object."""
    assert library[:4] == b"\x7fELF" and library[4] == 2 and library[5] == 1, "not a 64-bit little-endian ELF"
    return struct.unpack_from("<H", library, 18)[0]


def library_of(path):
    return read_artifact(path)[1][LIBRARY]


def newest_glibc(library):
    """The newest GLIBC_x.y symbol version an ELF library asks for (its version names are plain strings)."""
    return max(tuple(map(int, v)) for v in re.findall(rb"GLIBC_(\d+)\.(\d+)", library))


CROSS_GCC = "aarch64-linux-gnu-gcc"
ON_ARM64 = platform.machine() == "aarch64"


def fedskel_compile(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fedskel.compiler.cli", *map(str, args)], capture_output=True, text=True, env=env)


# ---- the registry ----------------------------------------------------------------------------
def test_named_targets_and_what_they_run_on():
    specs = available()
    assert set(specs) >= {"host", "x86_64", "arm64", "rpi4", "rk3399", "jetson-orin-cpu", "cuda", "jetson-orin"}
    for name in ["arm64", *ARM_BOARDS]:
        spec = specs[name]
        assert (spec.machine, spec.device, spec.gnu_triple, spec.is_cross()) == ("aarch64", "cpu", "aarch64-linux-gnu", not ON_ARM64)
        assert spec.tvm_target["mtriple"] == "aarch64-linux-gnu" and "+neon" in spec.tvm_target["mattr"]
    assert (specs["cuda"].machine, specs["cuda"].device, specs["cuda"].tvm_target["arch"]) == ("x86_64", "cuda", "sm_80")
    orin = specs["jetson-orin"]
    assert (orin.machine, orin.device, orin.tvm_target["arch"]) == ("aarch64", "cuda", "sm_87")
    assert orin.tvm_target["host"]["mcpu"] == "cortex-a78ae" and orin.gnu_triple == "aarch64-linux-gnu"


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
    assert (spec.name, spec.machine, spec.device, spec.is_cross()) == ("custom", "aarch64", "cpu", not ON_ARM64)
    gpu = get_target(json.dumps({"kind": "cuda", "arch": "sm_75", "host": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}}))
    assert (gpu.machine, gpu.device, gpu.gnu_triple) == ("x86_64", "cuda", "x86_64-linux-gnu")
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


def test_without_a_cross_gcc_every_arm64_target_links_with_the_pip_zig(monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # no aarch64-linux-gnu-gcc, no gcc at all
    for name in ("arm64", "rpi4", "rk3399", "jetson-orin-cpu", "jetson-orin"):
        linker = choose_linker(get_target(name))
        assert linker.describe()["name"] == "zig" and os.path.isfile(linker.command[0]), name
        assert linker.command[1:] == ("cc", "-target", f"aarch64-linux-gnu.{ZIG_GLIBC}"), name


def test_a_named_compiler_wins():
    assert choose_linker(get_target("arm64"), "zig").name == "zig"
    assert choose_linker(get_target("arm64"), "gcc").command == (shutil.which("gcc"),)
    assert choose_linker(get_target("host"), "zig").command[-1] == f"{platform.machine()}-linux-gnu.{ZIG_GLIBC}"
    with pytest.raises(TargetError, match="--cc no-such-cc: no such command on PATH"):
        choose_linker(get_target("arm64"), "no-such-cc")


def test_a_compiler_that_cannot_link_the_target_is_a_clear_error(tmp_path):
    # the host's gcc named for arm64 objects: it is used as asked, and its failure says what ran
    result = fedskel_compile("lenet5", "--target", "arm64", "--cc", "gcc", "--batch-size", "2", "-o", tmp_path / "a.fsk")
    assert result.returncode == 2
    assert "fedskel-compile: error: linking" in result.stderr and "gcc -shared -fPIC" in result.stderr
    assert not (tmp_path / "a.fsk").exists()


def test_list_targets_shows_every_target_with_its_machine_and_device():
    result = fedskel_compile("--list-targets")
    assert result.returncode == 0
    rows = {line.split()[0]: line.split()[1:3] for line in result.stdout.splitlines() if not line.startswith("also:")}
    assert rows == {name: [spec.machine, spec.device] for name, spec in available().items()}
    assert "cuda:sm_XX" in result.stdout and "JSON" in result.stdout


# ---- real cross-compiles ---------------------------------------------------------------------
def test_arm64_artifact_is_an_aarch64_library_refused_on_x86(artifact):
    path = artifact("lenet5", ratio=0.25, batch_size=4, target="arm64")
    library = library_of(path)
    assert elf_machine(library) == EM_AARCH64
    manifest = read_artifact(path)[0]
    assert manifest["target"] == {
        "name": "arm64", "tvm_target": get_target("arm64").tvm_target, "machine": "aarch64", "device": "cpu"
    }
    # the manifest says what linked it: a cross gcc installed here, else the pip zig (asking no glibc after 2.27)
    if not ON_ARM64 and shutil.which(CROSS_GCC) is None:
        assert manifest["linker"] == {"name": "zig", "version": "0.17.0", "flags": ["cc", "-target", "aarch64-linux-gnu.2.27"]}
        assert newest_glibc(library) <= (2, 27)
    if os.uname().machine != "aarch64":
        with pytest.raises(ArtifactError, match="built for target arm64 \\(aarch64\\); this machine is"):
            load(path)


def test_a_zig_linked_host_library_trains_exactly_like_the_gcc_linked_one(artifact):
    # the same objects linked by another linker: loaded by this TVM runtime, it must compute the very same bits
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 1, 28, 28)).astype(np.float32), np.array([0, 1, 2, 3])
    trainers = {cc: load(artifact("lenet5", ratio=0.25, batch_size=4, cc=cc)) for cc in ("gcc", "zig")}
    assert {cc: read_artifact(artifact("lenet5", ratio=0.25, batch_size=4, cc=cc))[0]["linker"]["name"] for cc in trainers} \
        == {"gcc": "gcc", "zig": "zig"}
    gradients = {cc: trainer.gradients(x, y) for cc, trainer in trainers.items()}
    for name, gradient in gradients["gcc"].items():
        assert np.array_equal(gradient, gradients["zig"][name]), name
    assert trainers["gcc"].train_step(x, y) == trainers["zig"].train_step(x, y)


def test_opt_level_0_builds_faster_code_of_the_same_results(artifact):
    # what LLVM may change at level 3 is only speed and float32 contraction: the gradients agree to float32 rounding
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 1, 28, 28)).astype(np.float32), np.array([0, 1, 2, 3])
    paths = {level: artifact("lenet5", ratio=0.25, batch_size=4, opt_level=level) for level in (0, None)}
    assert read_artifact(paths[0])[0]["target"]["tvm_target"]["opt-level"] == 0
    assert "opt-level" not in read_artifact(paths[None])[0]["target"]["tvm_target"]
    fast_build, default = (load(paths[level]).gradients(x, y) for level in (0, None))
    for name, gradient in default.items():
        np.testing.assert_allclose(fast_build[name], gradient, rtol=0, atol=1e-5 * np.abs(gradient).max(), err_msg=name)


def test_opt_level_goes_to_the_llvm_side_of_every_target():
    assert get_target("host").with_llvm_opt_level(1).tvm_target["opt-level"] == 1
    cuda = get_target("cuda").with_llvm_opt_level(0).tvm_target
    assert cuda["host"]["opt-level"] == 0 and "opt-level" not in cuda
    for bad in (4, -1, "0", 1.0):
        with pytest.raises(TargetError, match="LLVM opt level must be 0, 1, 2 or 3"):
            get_target("host").with_llvm_opt_level(bad)
    result = fedskel_compile("lenet5", "--opt-level", "5", "-o", "never.fsk")
    assert result.returncode == 2 and "--opt-level" in result.stderr and not os.path.exists("never.fsk")


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
    library = library_of(artifact("lenet5", ratio=0.25, batch_size=4, target="jetson-orin"))
    assert elf_machine(library) == EM_AARCH64
    assert library.count(b'extern "C" __global__') > 10
