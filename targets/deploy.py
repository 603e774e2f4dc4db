"""``fedskel-deploy``: put an artifact and the runtime it needs on a board over ssh, or just write the bundle.

    fedskel-deploy ARTIFACT user@board:DIR   copy, install and check (the commands are printed as they run)
    fedskel-deploy ARTIFACT user@board:DIR --dry-run   print the commands only
    fedskel-deploy --bundle DIR              write the runtime-only bundle, to copy by other means

On the board, DIR then holds the artifact, ``fedskel/runtime`` and ``requirements.txt``, and a venv with numpy,
cryptography and the TVM runtime (``DIR/venv``, made with the board's python3). The public key that signed
the artifact (it must be one this machine trusts) is installed in the board's
``~/.config/fedskel/trusted-keys/``, so the board loads what that key signs and nothing else. The last
command loads the artifact there, so a wrong architecture, a missing GPU or an untrusted signature is
reported at deploy time. Train with ``PYTHONPATH=DIR DIR/venv/bin/python your_client.py``.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

from fedskel.runtime.artifact import ArtifactError, read_artifact
from fedskel.runtime.signing import TRUSTED_DIR, key_id, public_key_line, trusted_keys

from .bundle import REQUIREMENTS, write_runtime_bundle


BOARD_TRUSTED_KEYS = f".config/fedskel/{TRUSTED_DIR}"  # under the board user's home (runtime/signing.py)


def signer_public_key(signer, directory):
    """Write the trusted public key with id ``signer`` to ``directory``/ID.pub; returns the file."""
    for key in trusted_keys():
        if key_id(key) == signer:
            path = os.path.join(directory, f"{signer}.pub")
            with open(path, "w") as handle:
                handle.write(public_key_line(key, comment=signer))
            return path
    raise ArtifactError(f"the key {signer} that signed the artifact is not among this machine's trusted keys")


def deploy_commands(artifact, destination, bundle, public_key, python="python3"):
    """The ssh/scp commands (argument lists) that install ``artifact``, ``bundle`` and the signer's
    ``public_key`` file at ``host:DIR``."""
    host, _, directory = destination.partition(":")
    if not host or not directory:
        raise ValueError(f"destination {destination!r} must be [user@]host:DIR")
    name = os.path.basename(artifact)
    venv_python = f"{directory}/venv/bin/python"
    check = '"import sys, fedskel.runtime as r; print(sys.argv[1], r.load(sys.argv[1]).skeleton_layers)"'
    return [
        ["ssh", host, f"mkdir -p {shlex.quote(directory)} {BOARD_TRUSTED_KEYS}"],
        ["scp", "-r", os.path.join(bundle, "fedskel"), os.path.join(bundle, REQUIREMENTS), artifact, f"{host}:{directory}/"],
        ["scp", public_key, f"{host}:{BOARD_TRUSTED_KEYS}/"],
        ["ssh", host, f"{python} -m venv {shlex.quote(directory + '/venv')} && "
                      f"{shlex.quote(venv_python)} -m pip install -q -r {shlex.quote(directory + '/' + REQUIREMENTS)}"],
        ["ssh", host, f"cd {shlex.quote(directory)} && PYTHONPATH=. venv/bin/python -c {check} {shlex.quote(name)}"],
    ]


def _parser():
    parser = argparse.ArgumentParser(
        prog="fedskel-deploy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("artifact", nargs="?", help="a .fsk artifact from fedskel-compile")
    parser.add_argument("destination", nargs="?", help="[user@]host:DIR on the board")
    parser.add_argument("--bundle", metavar="DIR", help="only write the runtime-only bundle into DIR")
    parser.add_argument("--python", default="python3", help="the board's Python 3 (default python3)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.bundle:
        if args.artifact or args.destination:
            parser.error("--bundle DIR takes no artifact or destination")
        write_runtime_bundle(args.bundle)
        print(f"wrote the runtime bundle to {args.bundle}: fedskel/runtime and {REQUIREMENTS}")
        return 0
    if not (args.artifact and args.destination):
        parser.error("an artifact and a destination [user@]host:DIR are required (or --bundle DIR)")
    with tempfile.TemporaryDirectory(prefix="fedskel-bundle-") as bundle:
        try:
            public_key = signer_public_key(read_artifact(args.artifact).signer, bundle)
        except ArtifactError as exc:
            print(f"fedskel-deploy: error: {exc}", file=sys.stderr)
            return 2
        runtime = os.path.join(bundle, "runtime")
        write_runtime_bundle(runtime)
        try:
            commands = deploy_commands(args.artifact, args.destination, runtime, public_key, args.python)
        except ValueError as exc:
            parser.error(str(exc))
        for command in commands:
            print(shlex.join(command), flush=True)
            if args.dry_run:
                continue
            returncode = subprocess.run(command).returncode
            if returncode != 0:
                print(f"fedskel-deploy: error: {command[0]} exited with {returncode}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
