"""The named targets, one declaration each: the CPUs and GPUs FedSkel artifacts are built for."""

import os
import platform

from .registry import register
from .spec import TargetSpec

ARM64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}


def _host_llvm():
    """This machine's CPU, so LLVM may use every vector extension it has."""
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1}


def _arm64_board(name, description, cpu=None, cores=None):
    tvm_target = dict(ARM64, **({"mcpu": cpu} if cpu else {}), **({"num-cores": cores} if cores else {}))
    return TargetSpec(name, description, tvm_target, machine="aarch64")


def _cuda(name, description, arch, host, machine):
    tvm_target = {"kind": "cuda", "arch": arch, "host": host}
    return TargetSpec(name, description, tvm_target, machine=machine, device="cuda")


register(TargetSpec("host", "this machine's CPU through LLVM, with all its vector extensions", _host_llvm(), platform.machine()))
register(TargetSpec("x86_64", "generic 64-bit x86 Linux (portable to any x86-64 CPU)", {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}, "x86_64"))
register(_arm64_board("arm64", "64-bit Arm Linux with NEON (any ARMv8-A CPU)"))
register(_arm64_board("rpi4", "Raspberry Pi 4: 4x Cortex-A72, 64-bit OS", cpu="cortex-a72", cores=4))
register(_arm64_board("rk3399", "Rockchip RK3399 boards: the 2 Cortex-A72 big cores", cpu="cortex-a72", cores=2))
register(_arm64_board("jetson-orin-cpu", "NVIDIA Jetson Orin's CPU: Cortex-A78AE (GPU unused)", cpu="cortex-a78ae"))
register(_cuda("cuda", "NVIDIA GPU on an x86-64 Linux host, sm_80 (cuda:sm_XX picks another arch)", "sm_80",
               {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}, "x86_64"))
register(_cuda("jetson-orin", "NVIDIA Jetson Orin: Ampere GPU sm_87, Cortex-A78AE host code", "sm_87",
               dict(ARM64, mcpu="cortex-a78ae"), "aarch64"))
