"""A mutation fuzzer against fl.wire.decode: what crosses the network is attacker-controlled bytes.

Inputs are valid messages (whole model, skeleton rows, float16, none) mutated as a fuzzer would (bit
flips, boundary values written over length and count fields, inserted, deleted, repeated and spliced
chunks, truncation), plus random bytes. For each, decode must either raise WireError or return an
update that is valid for the layout and is exactly what encoding it again gives back (so nothing invalid
is ever accepted), within a time bound. 10k inputs in the default run, 120k in the slow one.
"""

import struct
import time

import numpy as np
import pytest

from fedskel.fl.layout import ModelLayout
from fedskel.fl.update import Entry, Update
from fedskel.fl.wire import WireError, decode, encode

LAYOUT = ModelLayout.from_manifest({
    "params": [
        {"name": "c1.weight", "shape": [8, 1, 3, 3], "dtype": "float32"}, {"name": "c1.bias", "shape": [8], "dtype": "float32"},
        {"name": "c2.weight", "shape": [6, 8, 3, 3], "dtype": "float32"},
        {"name": "fc.weight", "shape": [10, 24], "dtype": "float32"}, {"name": "fc.bias", "shape": [10], "dtype": "float32"},
        {"name": "scale", "shape": [], "dtype": "float32"},
    ],
    "conv_layers": [{"weight": "c1.weight", "bias": "c1.bias", "out_channels": 8, "k": 3},
                    {"weight": "c2.weight", "bias": None, "out_channels": 6, "k": 2}],
})
BOUNDARY = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1]
SLOWEST_DECODE_S = 0.5


def seeds(rng):
    """Valid messages of every kind the system sends."""
    params = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in LAYOUT.shapes.items()}
    whole = Update({n: Entry(v) for n, v in params.items()}, num_examples=37)
    rows = {"c1.weight": np.array([5, 0, 2]), "c2.weight": np.array([1, 4])}
    skeleton = Update({
        **{n: Entry(params[n][r], r, LAYOUT.shape(n)) for n, r in rows.items()},
        "c1.bias": Entry(params["c1.bias"][rows["c1.weight"]], rows["c1.weight"], (8,)),
        "fc.weight": Entry(params["fc.weight"]), "scale": Entry(params["scale"]),
    }, num_examples=2**40)
    return [encode(whole), encode(whole, "float16"), encode(skeleton), encode(skeleton, "float16"), encode(Update({}, 0))]


def mutate(data, rng, pool):
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 9))
        position = int(rng.integers(0, len(data) + 1))
        if kind == 0 and data:  # flip bits
            for _ in range(int(rng.integers(1, 9))):
                i = int(rng.integers(0, len(data)))
                data[i] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1 and data:  # a byte to a boundary value
            data[int(rng.integers(0, len(data)))] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFE, 0xFF]))
        elif kind == 2:  # a length/count field to a boundary value
            fmt = str(rng.choice(["<H", "<I", "<Q"]))
            size = struct.calcsize(fmt)
            fitting = [b for b in BOUNDARY if b < 256 ** size]
            value = fitting[int(rng.integers(0, len(fitting)))]  # by index: numpy would turn 2**64 - 1 into a float
            if position + size <= len(data):
                data[position : position + size] = struct.pack(fmt, value)
        elif kind == 3:  # insert random bytes
            data[position:position] = rng.bytes(int(rng.integers(1, 16)))
        elif kind == 4 and data:  # delete a range
            data[position : position + int(rng.integers(1, 64))] = b""
        elif kind == 5:  # truncate
            del data[position:]
        elif kind == 6 and data:  # repeat a chunk
            end = min(len(data), position + int(rng.integers(1, 200)))
            data[end:end] = data[position:end]
        elif kind == 7:  # splice with another message
            other = pool[int(rng.integers(0, len(pool)))]
            cut = int(rng.integers(0, len(other) + 1))
            data = data[:position] + bytearray(other[cut:])
        else:  # a float payload byte pattern: NaN / Inf float32 and float16
            pattern = bytes(rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x7c", b"\x00\xfe"]))
            data[position : position + len(pattern)] = pattern
    return bytes(data)


def fuzz_inputs(count, seed):
    rng = np.random.default_rng(seed)
    pool = seeds(rng)
    for i in range(count):
        if i % 10 == 0:
            yield rng.bytes(int(rng.integers(0, 2000)))
        else:
            yield mutate(pool[int(rng.integers(0, len(pool)))], rng, pool)


def assert_valid(update, data):
    """What decode accepted is a valid update for the layout, and exactly the bytes of its own encoding."""
    codes = set()
    reader = 4 + 2 + 8 + 4
    for name, entry in update.entries.items():
        assert name in LAYOUT.shapes and entry.shape == LAYOUT.shapes[name]
        assert np.isfinite(entry.values).all()
        if entry.rows is not None:
            assert name in LAYOUT.conv_param_names
            assert len(set(entry.rows.tolist())) == len(entry.rows) and entry.rows.min() >= 0 and entry.rows.max() < entry.shape[0]
        reader += 2 + len(name.encode()) + 1 + 4 * len(entry.shape)
        codes.add(data[reader])
        reader += 2 + (0 if entry.rows is None else 4 + 4 * len(entry.rows))
        reader += 8 + struct.unpack_from("<Q", data, reader)[0]
    assert reader == len(data)
    if len(codes) <= 1:
        dtype = {1: "float32", 2: "float16"}.get(next(iter(codes), 1))
        assert encode(update, dtype) == data


def run_fuzzer(count, seed):
    outcomes = {"accepted": 0, "rejected": 0}
    slowest = 0.0
    for data in fuzz_inputs(count, seed):
        started = time.perf_counter()
        try:
            update = decode(data, LAYOUT)
        except WireError:
            outcomes["rejected"] += 1
        else:
            outcomes["accepted"] += 1
            assert_valid(update, data)
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < SLOWEST_DECODE_S, f"one decode took {slowest:.3f} s"
    return outcomes


def test_seeds_round_trip():
    for data in seeds(np.random.default_rng(0)):
        assert_valid(decode(data, LAYOUT), data)


def test_ten_thousand_fuzzed_messages():
    outcomes = run_fuzzer(10_000, seed=0)
    assert sum(outcomes.values()) == 10_000
    assert outcomes["rejected"] > 5_000 and outcomes["accepted"] > 50  # the mutations reach both sides of the checks


@pytest.mark.slow
def test_a_hundred_and_twenty_thousand_fuzzed_messages():
    outcomes = run_fuzzer(120_000, seed=1)
    assert sum(outcomes.values()) == 120_000
