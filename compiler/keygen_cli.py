"""``fedskel-keygen``: make an Ed25519 key pair for signing artifacts (``fedskel-compile --sign-key``)."""

import argparse
import sys

from fedskel.runtime.artifact import ArtifactError
from fedskel.runtime.signing import DEFAULT_KEY, TRUSTED_DIR, TRUSTED_KEYS_ENV, config_dir, generate_key, key_id, public_key_line


def _parser():
    parser = argparse.ArgumentParser(
        prog="fedskel-keygen",
        description="Make an Ed25519 key pair that signs FedSkel artifacts. Devices load only artifacts signed by a "
        f"key they trust: copy KEY.pub into their {TRUSTED_DIR}/ directory or name it in ${TRUSTED_KEYS_ENV}.",
    )
    parser.add_argument("-o", "--output", help=f"private key file (default: {config_dir() / DEFAULT_KEY}, the key fedskel-compile signs with)")
    parser.add_argument("--trust", action="store_true", help=f"also trust the new key on this machine ({config_dir() / TRUSTED_DIR})")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    path = args.output or config_dir() / DEFAULT_KEY
    try:
        key = generate_key(path, trust=args.trust or args.output is None)
    except (ArtifactError, OSError) as exc:
        print(f"fedskel-keygen: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (private, keep it secret) and {path}.pub; key id {key_id(key.public_key())}")
    print(public_key_line(key.public_key()).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
