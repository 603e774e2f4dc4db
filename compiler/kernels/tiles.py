"""Register tiles per ISA: how many lanes a vector holds and how many accumulators fit in the registers.

A CONV kernel's inner tile is TW output pixels (broadcast) x V vectors of output channels, kept in
registers across the whole reduction; it must leave room for the V weight vectors and one broadcast.
The ISA is read off the TVM target (``mcpu``/``mattr``), never off the machine compiling, so an arm64
artifact built on x86 gets NEON tiles.
"""

from dataclasses import dataclass

from tvm.target import codegen

AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "icelake", "tigerlake", "sapphirerapids",
               "rocketlake", "znver4", "znver5", "graniterapids", "emeraldrapids")
# x86 CPUs LLVM knows that lack AVX2 (every later named one, Haswell and Zen 1 on, has it)
GENERIC_CPUS = ("x86-64", "x86-64-v2", "generic")
PRE_AVX2_CPUS = ("nehalem", "westmere", "sandybridge", "ivybridge", "core2", "penryn", "btver",
                 "bdver1", "bdver2", "silvermont", "goldmont", "atom", "bonnell", "k8", "amdfam10")


@dataclass(frozen=True)
class VectorISA:
    name: str
    vector_bits: int
    registers: int

    def lanes(self, dtype):
        """Elements of ``dtype`` (float32, float64) in one vector register."""
        return self.vector_bits // int(str(dtype).removeprefix("float"))

    def padded(self, channels, dtype):
        """``channels`` rounded up to whole vectors of ``dtype``: what a channel axis in the lanes is padded to."""
        lanes = self.lanes(dtype)
        return -(-channels // lanes) * lanes

    @property
    def accumulators(self):
        """Vector accumulators a tile may keep: all registers but the weight vectors and a broadcast."""
        return self.registers - 4


SSE = VectorISA("sse", 128, 16)
AVX2 = VectorISA("avx2", 256, 16)
AVX512 = VectorISA("avx512", 512, 32)
NEON = VectorISA("neon", 128, 32)


def target_isa(tvm_target):
    """The vector ISA code for ``tvm_target`` (a TVM JSON target dict) will run on."""
    triple = tvm_target.get("mtriple") or codegen.llvm_get_system_triple()
    if triple.startswith(("aarch64", "arm64")):
        return NEON
    cpu = tvm_target.get("mcpu", "")
    attrs = tvm_target.get("mattr", [])
    if cpu in AVX512_CPUS or "+avx512f" in attrs:
        return AVX512
    if "+avx2" in attrs or (cpu and cpu not in GENERIC_CPUS and not cpu.startswith(PRE_AVX2_CPUS)):
        return AVX2
    return SSE


def largest_divisor(extent, limit):
    """The largest divisor of ``extent`` that is <= ``limit`` (tiles that divide need no tail code)."""
    return max(d for d in range(1, min(extent, max(limit, 1)) + 1) if extent % d == 0)


@dataclass(frozen=True)
class ConvTile:
    pixels: int  # TW: output pixels (or input channels, for wgrad) broadcast per step
    vectors: int  # V: output-channel vectors per step
    lanes: int

    @property
    def channels(self):
        return self.vectors * self.lanes


def conv_tile(isa, dtype, channels, pixels):
    """The register tile for ``channels`` output channels (a multiple of the lanes) and ``pixels`` broadcast rows."""
    lanes = isa.lanes(dtype)
    vectors = 2 if channels % (2 * lanes) == 0 else 1
    return ConvTile(largest_divisor(pixels, isa.accumulators // vectors), vectors, lanes)
