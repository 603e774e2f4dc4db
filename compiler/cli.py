"""``fedskel-compile``: a zoo model or ONNX file in, one artifact out; exit code 2 on bad input."""

import argparse
import sys

from fedskel.targets import TargetError, available, get_target

from .errors import CompileError
from .pipeline import DEFAULT_OPTIMIZER, compile_model
from .torchvision_zoo import MODELS as TORCHVISION_MODELS
from .torchvision_zoo import PREFIX as TORCHVISION_PREFIX
from .zoo import ZOO


def _parser():
    parser = argparse.ArgumentParser(
        prog="fedskel-compile",
        description="Compile a CNN into a FedSkel training artifact (forward, loss, full and skeleton backward, SGD).",
    )
    parser.add_argument("model", nargs="?", help=f"a zoo model ({', '.join(ZOO)}), torchvision:NAME or an ONNX file")
    parser.add_argument("-o", "--output", help="artifact path (default: MODEL-TARGET.fsk)")
    parser.add_argument("--target", default="host", help="named target, cuda:sm_XX, or a TVM target as JSON (see --list-targets)")
    parser.add_argument("--ratio", type=float, default=0.1, help="skeleton ratio r in (0, 1]; k = ceil(r * Cout)")
    parser.add_argument("--batch-size", type=int, help="fixes a symbolic batch (zoo default 32)")
    parser.add_argument("--num-classes", type=int, help="when the output shape does not say (torchvision: default 1000)")
    parser.add_argument("--input-shape", type=_shape, help="CxHxW of a torchvision model (default 3x224x224)")
    for key, value in DEFAULT_OPTIMIZER.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, default=value, help=f"SGD {key} (default {value})")
    parser.add_argument("--seed", type=int, default=0, help="initial weights of zoo models")
    parser.add_argument("--tuning-db", metavar="DIR", help="apply a fedskel-tune database (same model, ratio, batch, target)")
    parser.add_argument("--sign-key", metavar="KEY", help="Ed25519 private key (fedskel-keygen) that signs the artifact "
                        "(default: your key in $FEDSKEL_HOME or ~/.config/fedskel, made and trusted here on first use)")
    parser.add_argument("--cc", metavar="COMMAND", help="what links the library: a compiler on PATH (e.g. aarch64-linux-gnu-gcc), "
                        "or zig (the pip-installed one); default: the target's cross gcc if installed, else zig")
    parser.add_argument("--no-conv-kernels", dest="conv_kernels", action="store_false",
                        help="build CONVs with TVM's own lowering instead of FedSkel's hand-scheduled kernels (to compare)")
    parser.add_argument("--opt-level", type=int, choices=range(4), metavar="{0,1,2,3}",
                        help="LLVM optimisation level (default 3); 0 compiles several times faster, runs slower")
    parser.add_argument("--list-targets", action="store_true", help="list the named targets and exit")
    parser.add_argument("--list-models", action="store_true", help="list the zoo and torchvision models and exit")
    return parser


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"input shape must be CxHxW with positive sizes, got {text!r}")
    return shape


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.list_targets:
        for name, spec in sorted(available().items()):
            print(f"{name:16s} {spec.machine:8s} {spec.device:5s} {spec.description}")
        print('also: cuda:sm_XX (another GPU arch), or a TVM target as JSON: \'{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}\'')
        return 0
    if args.list_models:
        for name, entry in ZOO.items():
            print(f"{name:30s} {'x'.join(map(str, entry.input_shape)):10s} {entry.description}")
        for name in TORCHVISION_MODELS:
            print(f"{TORCHVISION_PREFIX + name:30s} {'--input-shape':10s} torchvision's builder, random weights")
        return 0
    if args.model is None:
        _parser().error("a model is required")
    try:
        target_name = get_target(args.target).name.replace(":", "-")  # "custom" for a JSON target
    except TargetError as exc:
        print(f"fedskel-compile: error: {exc}", file=sys.stderr)
        return 2
    output = args.output or f"{args.model.rsplit('/', 1)[-1].removesuffix('.onnx').replace(':', '-')}-{target_name}.fsk"
    optimizer = {key: getattr(args, key) for key in DEFAULT_OPTIMIZER}
    try:
        manifest = compile_model(
            args.model, output, target=args.target, ratio=args.ratio, batch_size=args.batch_size,
            num_classes=args.num_classes, optimizer=optimizer, seed=args.seed, tuning_db=args.tuning_db,
            sign_key=args.sign_key, cc=args.cc, input_shape=args.input_shape,
            conv_kernels=args.conv_kernels, opt_level=args.opt_level,
        )
    except CompileError as exc:
        print(f"fedskel-compile: error: {exc}", file=sys.stderr)
        return 2
    layers = ", ".join(f"{layer['weight']} {layer['k']}/{layer['out_channels']}" for layer in manifest["conv_layers"])
    linker = manifest["linker"]
    print(f"wrote {output}: {manifest['model']} batch {manifest['batch_size']} for {manifest['target']['name']} "
          f"(linked by {linker['name']} {linker['version']}); skeleton k/Cout: {layers}")
    if manifest["tuning"]:
        print(f"tuned kernels: {manifest['tuning']['tuned_tasks']} of {manifest['tuning']['total_tasks']} from {args.tuning_db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
