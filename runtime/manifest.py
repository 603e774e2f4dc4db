"""The manifest an artifact carries, parsed strictly and checked field by field before the runtime uses it.

Every number the runtime takes from the manifest sizes a buffer or bounds an index (a skeleton index is
checked against ``out_channels``, a label against ``num_classes``), so each field has a type, a range and a
length, and the fields must agree with each other. The library and ``params.npz`` are checked against the
result afterwards (runtime/library.py, runtime/params_file.py). Every failure is an ArtifactError naming
the field.
"""

import json
import math
import re

from .errors import ArtifactError

FORMAT_VERSION = 1
LIBRARY = "model.so"
PARAMS = "params.npz"
HASHED_MEMBERS = (LIBRARY, PARAMS)

# How the runtime calls each compiled function (runtime/trainer.py, runtime/library.py). The compiler
# builds its functions to it (compiler/training_graph.py) and writes it into every manifest; an artifact
# with another convention is refused.
CALLING_CONVENTION = {
    "forward_train": ["input", "params", "states"],
    "predict": ["input", "params", "states"],
    "gradients": ["input", "params", "states", "labels"],
    "gradients_skel": ["input", "params", "states", "labels", "skeleton"],
    "train_step": ["input", "labels", "lr", "momentum", "weight_decay", "params", "states", "velocities"],
    "train_step_skel": ["input", "labels", "lr", "momentum", "weight_decay", "params", "states", "velocities", "skeleton"],
}

DROPOUT_SEED = "dropout_seed"  # int64 scalar: the extra input of a Dropout model's train-mode functions


def calling_convention(dropout=False):
    """CALLING_CONVENTION, with the Dropout seed in the train-mode functions of a model with Dropout
    (after the states, or after the velocities in a train step); predict never takes one."""
    if not dropout:
        return CALLING_CONVENTION
    args = {}
    for name, names in CALLING_CONVENTION.items():
        after = "velocities" if name.startswith("train_step") else "states"
        at = names.index(after) + 1
        args[name] = names if name == "predict" else [*names[:at], DROPOUT_SEED, *names[at:]]
    return args


MAX_NAME = 256  # characters of a model, parameter or target name
MAX_TENSORS = 4096  # parameters, states, CONV layers
MAX_RANK = 8
MAX_DIM = 2**31 - 1  # dimensions are int32 in the compiled code
MAX_ELEMENTS = 2**31 - 1  # of one tensor
MAX_DEPTH = 8  # of the nested target description


def parse_manifest(data):
    """The manifest dict from its JSON bytes: no duplicate keys, no NaN/Infinity, bounded nesting."""
    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ArtifactError(f"manifest.json is not valid JSON ({exc})") from None
    except RecursionError:
        raise ArtifactError("manifest.json is nested too deeply") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"manifest.json must be a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ArtifactError(f"unknown artifact format version {version!r} (this runtime reads {FORMAT_VERSION})")
    return manifest


def validate_manifest(manifest):
    """Check every field's type and range, then that the fields agree; returns the manifest."""
    _SCHEMA(manifest, "manifest")
    _check_consistency(manifest)
    return manifest


# ---- the schema: small validators, each called with (value, where) --------------------------------
def _fail(where, message):
    raise ArtifactError(f"{where}: {message}")


def integer(low, high):
    def check(value, where):
        if type(value) is not int:  # bool is an int subclass: excluded
            _fail(where, f"must be an integer, got {_show(value)}")
        if not low <= value <= high:
            _fail(where, f"{value} outside [{low}, {high}]")
    return check


def number(low, high, low_open=False):
    def check(value, where):
        if type(value) not in (int, float) or not math.isfinite(value):
            _fail(where, f"must be a finite number, got {_show(value)}")
        if not (low < value if low_open else low <= value) or value > high:
            _fail(where, f"{value} outside {'(' if low_open else '['}{low}, {high}]")
    return check


def text(max_length=MAX_NAME, pattern=None):
    def check(value, where):
        if type(value) is not str:
            _fail(where, f"must be a string, got {_show(value)}")
        if not 0 < len(value) <= max_length:
            _fail(where, f"length {len(value)} outside [1, {max_length}]")
        if pattern is not None and not re.fullmatch(pattern, value):
            _fail(where, f"{value[:80]!r} does not match {pattern}")
    return check


def one_of(*choices):
    def check(value, where):
        if type(value) is not type(choices[0]) or value not in choices:
            _fail(where, f"must be one of {list(choices)}, got {_show(value)}")
    return check


def nullable(spec):
    def check(value, where):
        if value is not None:
            spec(value, where)
    return check


def list_of(spec, min_length=0, max_length=MAX_TENSORS):
    def check(value, where):
        if type(value) is not list:
            _fail(where, f"must be a list, got {_show(value)}")
        if not min_length <= len(value) <= max_length:
            _fail(where, f"has {len(value)} items, expected {min_length} to {max_length}")
        for i, item in enumerate(value):
            spec(item, f"{where}[{i}]")
    return check


def record(**fields):
    """A JSON object with exactly these keys (an unknown key is refused: the format version says what exists)."""
    def check(value, where):
        if type(value) is not dict:
            _fail(where, f"must be an object, got {_show(value)}")
        missing, unknown = sorted(set(fields) - set(value)), sorted(set(value) - set(fields))
        if missing or unknown:
            _fail(where, f"missing keys {missing}, unknown keys {unknown}" if missing and unknown
                  else f"missing keys {missing}" if missing else f"unknown keys {unknown}")
        for key, spec in fields.items():
            spec(value[key], f"{where}.{key}")
    return check


def json_tree(depth=MAX_DEPTH):
    """Any JSON value of bounded nesting whose strings and lists are bounded (a TVM target description)."""
    def check(value, where):
        if depth == 0:
            _fail(where, f"nested deeper than {MAX_DEPTH}")
        if type(value) is dict:
            list_of(text(), 0, 64)(list(value), where + " keys")
            for key, item in value.items():
                json_tree(depth - 1)(item, f"{where}.{key}")
        elif type(value) is list:
            list_of(json_tree(depth - 1), 0, 256)(value, where)
        elif type(value) is str:
            if len(value) > 4096:
                _fail(where, f"string of {len(value)} characters, at most 4096")
        elif not (value is None or type(value) in (bool, int) or (type(value) is float and math.isfinite(value))):
            _fail(where, f"unexpected {_show(value)}")
    return check


def exactly(expected):
    def check(value, where):
        if value != expected:
            _fail(where, f"must be {json.dumps(expected)}, got {_show(value)}")
    return check


_DTYPE = one_of("float32", "float64")
_TENSOR = record(name=text(), shape=list_of(integer(1, MAX_DIM), 0, MAX_RANK), dtype=_DTYPE)
_SHA256 = text(64, "[0-9a-f]{64}")
_SCHEMA = record(
    format_version=exactly(FORMAT_VERSION),
    model=text(),
    input_shape=list_of(integer(1, MAX_DIM), 1, MAX_RANK),
    dtype=_DTYPE,
    batch_size=integer(1, 2**20),
    num_classes=integer(1, 2**20),
    params=list_of(_TENSOR, 1),
    states=list_of(_TENSOR),
    conv_layers=list_of(record(weight=text(), bias=nullable(text()), out_channels=integer(1, MAX_DIM), k=integer(1, MAX_DIM))),
    ratio=number(0, 1, low_open=True),
    optimizer=record(lr=number(0, 1e6), momentum=number(0, 1e6), weight_decay=number(0, 1e6)),
    functions=one_of(calling_convention(False), calling_convention(True)),
    target=record(name=text(), tvm_target=json_tree(), machine=text(64), device=one_of("cpu", "cuda")),
    batch_norm_running_var=one_of("unbiased"),
    conv_kernels=one_of("nhwc-hand-scheduled", "tvm-default"),  # compiler/kernels, or TVM's own CONV lowering
    linker=record(name=text(64), version=text(128), flags=list_of(text(256), 0, 32)),
    tvm_version=text(64),
    tuning=nullable(record(database_sha256=_SHA256, tuned_tasks=integer(0, 2**31), total_tasks=integer(0, 2**31))),
    sha256=record(**{name: _SHA256 for name in HASHED_MEMBERS}),
)


def _check_consistency(manifest):
    """What no single field's range can say: the fields must describe one model."""
    if manifest["input_shape"][0] != manifest["batch_size"]:
        _fail("manifest.input_shape", f"batch {manifest['input_shape'][0]} differs from batch_size {manifest['batch_size']}")
    tensors = {}
    for kind in ("params", "states"):
        for i, tensor in enumerate(manifest[kind]):
            where = f"manifest.{kind}[{i}]"
            if tensor["name"] in tensors:
                _fail(where, f"name {tensor['name']!r} appears twice")
            if tensor["dtype"] != manifest["dtype"]:
                _fail(where, f"dtype {tensor['dtype']} differs from the model's {manifest['dtype']}")
            if math.prod(tensor["shape"]) > MAX_ELEMENTS:
                _fail(where, f"shape {tensor['shape']} has more than {MAX_ELEMENTS} elements")
            tensors[tensor["name"]] = tensor["shape"]
    if math.prod(manifest["input_shape"]) > MAX_ELEMENTS:
        _fail("manifest.input_shape", f"{manifest['input_shape']} has more than {MAX_ELEMENTS} elements")
    params = {p["name"] for p in manifest["params"]}
    owned = set()
    for i, layer in enumerate(manifest["conv_layers"]):
        where, channels = f"manifest.conv_layers[{i}]", layer["out_channels"]
        for role in ("weight", "bias"):
            name = layer[role]
            if name is None:
                continue
            if name not in params:
                _fail(where, f"{role} {name!r} is not a parameter")
            if name in owned:
                _fail(where, f"{role} {name!r} belongs to two CONV layers")
            owned.add(name)
        weight_shape = tensors[layer["weight"]]
        if not weight_shape or weight_shape[0] != channels:
            _fail(where, f"out_channels {channels} but weight {layer['weight']!r} has shape {weight_shape}")
        if layer["bias"] is not None and tensors[layer["bias"]] != [channels]:
            _fail(where, f"bias {layer['bias']!r} has shape {tensors[layer['bias']]}, expected [{channels}]")
        if layer["k"] > channels:
            _fail(where, f"k={layer['k']} exceeds out_channels {channels}")


def _no_duplicate_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"key {duplicate!r} appears twice in one object")
    return dict(pairs)


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _show(value):
    shown = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return f"{type(value).__name__} {shown[:60]}"
