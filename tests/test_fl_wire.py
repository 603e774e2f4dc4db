import struct

import numpy as np
import pytest

from fedskel.fl.layout import ModelLayout
from fedskel.fl.update import Entry, Update
from fedskel.fl.wire import WireError, decode, encode

LAYOUT = ModelLayout.from_manifest(
    {
        "params": [
            {"name": "conv.weight", "shape": [6, 2, 3, 3], "dtype": "float32"},
            {"name": "conv.bias", "shape": [6], "dtype": "float32"},
            {"name": "fc.weight", "shape": [4, 5], "dtype": "float32"},
        ],
        "conv_layers": [{"weight": "conv.weight", "bias": "conv.bias", "out_channels": 6, "k": 2}],
    }
)
RNG = np.random.default_rng(0)
CONV_ROWS = RNG.standard_normal((2, 2, 3, 3)).astype(np.float32)
BIAS_ROWS = RNG.standard_normal(2).astype(np.float32)
FC = RNG.standard_normal((4, 5)).astype(np.float32)


def sample_update() -> Update:
    return Update(
        {
            "conv.weight": Entry(CONV_ROWS, np.array([4, 1]), (6, 2, 3, 3)),
            "conv.bias": Entry(BIAS_ROWS, np.array([4, 1]), (6,)),
            "fc.weight": Entry(FC),
        },
        num_examples=37,
    )


# An independent writer of the documented format, to craft malformed messages.
def raw_entry(name, shape, payload, rows=None, code=1, flags=None, payload_len=None, name_bytes=None):
    name_bytes = name.encode() if name_bytes is None else name_bytes
    out = struct.pack("<H", len(name_bytes)) + name_bytes + struct.pack("<B", len(shape))
    out += b"".join(struct.pack("<I", d) for d in shape)
    flags = (0 if rows is None else 1) if flags is None else flags
    out += struct.pack("<BB", code, flags)
    if rows is not None:
        out += struct.pack("<I", len(rows)) + np.asarray(rows, "<u4").tobytes()
    data = np.asarray(payload, "<f4" if code == 1 else "<f2").tobytes()
    return out + struct.pack("<Q", len(data) if payload_len is None else payload_len) + data


def raw_message(*entries, magic=b"FSKW", version=1, num_examples=3, count=None):
    header = struct.pack("<4sHQI", magic, version, num_examples, len(entries) if count is None else count)
    return header + b"".join(entries)


def bias_entry(**kwargs):
    kwargs.setdefault("rows", [0, 3])
    return raw_entry("conv.bias", (6,), kwargs.pop("payload", [1.0, 2.0]), **kwargs)


def test_float32_round_trip_is_exact():
    update = sample_update()
    back = decode(encode(update), LAYOUT)

    assert back.num_examples == 37
    assert list(back.entries) == list(update.entries)
    for name, entry in update.entries.items():
        np.testing.assert_array_equal(back.entries[name].values, entry.values)
        assert back.entries[name].shape == entry.shape
        assert back.entries[name].values.dtype == np.float32
    np.testing.assert_array_equal(back.entries["conv.weight"].rows, [4, 1])
    assert back.entries["fc.weight"].rows is None


def test_float16_round_trip_is_close_and_about_half_the_size():
    update = sample_update()
    data16 = encode(update, dtype="float16")
    back = decode(data16, LAYOUT)

    for name, entry in update.entries.items():
        assert back.entries[name].values.dtype == np.float32
        np.testing.assert_allclose(back.entries[name].values, entry.values, rtol=1e-3, atol=1e-3)
    payload_floats = CONV_ROWS.size + BIAS_ROWS.size + FC.size
    assert len(encode(update)) - len(data16) == 2 * payload_floats


def test_encoding_follows_the_documented_format():
    update = Update({"conv.bias": Entry(np.array([1.0, 2.0]), np.array([0, 3]), (6,))}, num_examples=3)
    assert encode(update) == raw_message(bias_entry())


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "truncated"),
        (b"\x00garbage\xff" * 3, "bad magic"),
        (raw_message(bias_entry(), magic=b"ONNX"), "bad magic"),
        (raw_message(bias_entry(), version=2), "unsupported wire version 2"),
        (raw_message(raw_entry("conv.other", (6,), np.zeros(6))), "unknown parameter 'conv.other'"),
        (raw_message(raw_entry("fc.weight", (5, 4), np.zeros(20))), r"shape \(5, 4\), layout says \(4, 5\)"),
        (raw_message(raw_entry("fc.weight", (4,), np.zeros(4))), "shape"),
        (raw_message(bias_entry(rows=[0, 6])), r"row index 6 out of range \[0, 6\)"),
        (raw_message(bias_entry(rows=[2, 2])), "row index 2 appears more than once"),
        (raw_message(raw_entry("fc.weight", (4, 5), np.zeros((1, 5)), rows=[0])), "not a conv weight or bias"),
        (raw_message(bias_entry(payload_len=12)), "payload is 12 bytes, expected 8"),
        (raw_message(bias_entry(payload=[1.0, np.nan])), "NaN or Inf"),
        (raw_message(bias_entry(payload=[np.inf, 1.0], code=2)), "NaN or Inf"),
        (raw_message(bias_entry()) + b"\x00", "1 trailing bytes"),
        (raw_message(bias_entry(), count=2), "truncated"),
        (raw_message(bias_entry(), bias_entry()), "appears twice"),
        (raw_message(bias_entry(code=7)), "unknown dtype code 7"),
        (raw_message(bias_entry(flags=3)), "unknown flags"),
        (raw_message(bias_entry(name_bytes=b"\xff\xfe")), "not UTF-8"),
    ],
)
def test_decode_rejects(data, reason):
    with pytest.raises(WireError, match=reason):
        decode(data, LAYOUT)


def test_every_truncation_is_rejected():
    data = encode(sample_update())
    for cut in range(len(data)):
        with pytest.raises(WireError, match="truncated"):
            decode(data[:cut], LAYOUT)


@pytest.mark.parametrize(
    "values, dtype, reason",
    [
        (np.array([1.0, np.nan, 0, 0, 0, 0]), "float32", "NaN or Inf"),
        (np.array([1e6, 0, 0, 0, 0, 0]), "float16", "overflows float16"),
        (np.zeros(6), "bfloat16", "unsupported wire dtype"),
    ],
)
def test_encode_refuses_what_the_receiver_would_reject(values, dtype, reason):
    with pytest.raises(WireError, match=reason):
        encode(Update({"conv.bias": Entry(values)}, num_examples=1), dtype=dtype)
