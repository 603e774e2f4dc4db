"""Ed25519 signatures over an artifact's manifest, and the keys a machine trusts.

The manifest holds the sha256 of every other member, so one signature over its exact bytes authenticates
the whole artifact. The signature member is ``{"algorithm": "ed25519", "public_key": b64, "signature": b64}``
over ``DOMAIN + manifest bytes`` (the prefix keeps a FedSkel signature from meaning anything elsewhere).

Where keys live (``config_dir()``: ``$FEDSKEL_HOME``, else ``$XDG_CONFIG_HOME/fedskel``, else
``~/.config/fedskel``): ``signing-key.pem``, the default key ``fedskel-compile`` signs with (made on first
use, mode 0600), and ``trusted-keys/*.pub``, the public keys ``load`` accepts (OpenSSH ``ssh-ed25519``
lines). The default key's public half is put there when it is made, so what a machine compiles it also
loads; a device trusts only what is installed there. ``FEDSKEL_TRUSTED_KEYS`` (files or directories,
separated by ``os.pathsep``) replaces ``trusted-keys/`` to pin keys explicitly.

``cryptography`` is imported only when a signature is made or checked.
"""

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import ArtifactError

DOMAIN = b"fedskel-artifact-manifest-v1\0"
ALGORITHM = "ed25519"
TRUSTED_KEYS_ENV = "FEDSKEL_TRUSTED_KEYS"
HOME_ENV = "FEDSKEL_HOME"
DEFAULT_KEY = "signing-key.pem"
TRUSTED_DIR = "trusted-keys"
_MAX_KEY_FILE = 64 * 1024


class KeyFileError(ArtifactError):
    """A key file that cannot be read or is not an Ed25519 key."""


def config_dir():
    """The directory holding this user's default signing key and trusted public keys."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "fedskel"


def key_id(public_key):
    """A short, stable name for a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    return hashlib.sha256(_raw(public_key)).hexdigest()[:16]


# ---- making and reading keys -------------------------------------------------------------------
def generate_key(path, trust=False):
    """Write a new private key to ``path`` (0600, refusing to overwrite) and its public key to ``path``.pub.

    ``trust``: also install the public key in this machine's ``trusted-keys/``. Returns the private key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_new(path, pem, overwrite=False, mode=0o600)
    public_line = public_key_line(key.public_key(), comment=path.name)
    _write_new(path.with_name(path.name + ".pub"), public_line)
    if trust:
        trust_key(key.public_key())
    return key


def trust_key(public_key):
    """Install ``public_key`` in this machine's ``trusted-keys/`` (named by its key id); returns the file."""
    directory = config_dir() / TRUSTED_DIR
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{key_id(public_key)}.pub"
    if not target.exists():
        _write_new(target, public_key_line(public_key, comment=key_id(public_key)))
    return target


def public_key_line(public_key, comment=""):
    """The OpenSSH form of a public key: ``ssh-ed25519 AAAA... comment``."""
    from cryptography.hazmat.primitives import serialization

    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip() + "\n"


def load_signing_key(path):
    """The Ed25519 private key in the PEM file ``path``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def default_signing_key():
    """This user's default signing key, made (and trusted on this machine) on first use."""
    path = config_dir() / DEFAULT_KEY
    if not path.exists():
        try:
            return generate_key(path, trust=True)
        except KeyFileError:
            if not path.exists():
                raise
            # another process made it first (two compiles at once): use that one
    return load_signing_key(path)


def load_public_key(source):
    """An Ed25519 public key from a key object, raw 32 bytes, an ``ssh-ed25519`` line, or a .pub file path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, Ed25519PrivateKey):
        return source.public_key()
    if isinstance(source, bytes) and len(source) == 32:
        return Ed25519PublicKey.from_public_bytes(source)
    if isinstance(source, str) and source.startswith("ssh-ed25519 "):
        text, where = source.encode(), "the key given"
    elif isinstance(source, (str, os.PathLike)):
        text, where = _read_key_file(source), os.fspath(source)
    else:
        raise KeyFileError(f"cannot use {type(source).__name__} as a public key (give a path, an ssh-ed25519 line or a key)")
    try:
        key = serialization.load_ssh_public_key(text.strip())
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{where}: not an OpenSSH public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{where}: a {type(key).__name__}, not an ssh-ed25519 key")
    return key


def trusted_keys(keys=None):
    """The public keys to accept: ``keys`` if given, else $FEDSKEL_TRUSTED_KEYS, else ``trusted-keys/``."""
    if keys is not None:
        return [load_public_key(k) for k in ([keys] if isinstance(keys, (str, os.PathLike, bytes)) else keys)]
    if os.environ.get(TRUSTED_KEYS_ENV):
        sources = [Path(p) for p in os.environ[TRUSTED_KEYS_ENV].split(os.pathsep) if p]
    else:
        sources = [config_dir() / TRUSTED_DIR]
    found = []
    for source in sources:
        if source.is_dir():
            found += [load_public_key(p) for p in sorted(source.glob("*.pub"))]
        elif source.exists() or os.environ.get(TRUSTED_KEYS_ENV):
            found.append(load_public_key(source))  # a pinned file that is missing is an error, not "no keys"
    return found


# ---- signatures --------------------------------------------------------------------------------
def sign_manifest(manifest_bytes, private_key):
    """The signature member (bytes) for ``manifest_bytes``."""
    signature = private_key.sign(DOMAIN + manifest_bytes)
    public = _raw(private_key.public_key())
    record = {"algorithm": ALGORITHM, "public_key": _b64(public), "signature": _b64(signature)}
    return json.dumps(record, sort_keys=True).encode()


def verify_manifest(manifest_bytes, signature_bytes, keys):
    """The key id that signed ``manifest_bytes`` if it is one of ``keys``; ArtifactError saying why not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    public, signature = _parse_signature(signature_bytes)
    signer = Ed25519PublicKey.from_public_bytes(public)
    try:
        signer.verify(signature, DOMAIN + manifest_bytes)
    except InvalidSignature:
        raise ArtifactError("the signature does not match the manifest (tampered or corrupt)") from None
    if public not in {_raw(k) for k in keys}:
        raise ArtifactError(f"signed by key {key_id(signer)}, which is not trusted here "
                            f"({len(keys)} trusted; install the signer's .pub in {config_dir() / TRUSTED_DIR} "
                            f"or name it in ${TRUSTED_KEYS_ENV})")
    return key_id(signer)


def _parse_signature(data):
    try:
        record = json.loads(data)
        if not isinstance(record, dict) or set(record) != {"algorithm", "public_key", "signature"}:
            raise ValueError("fields must be algorithm, public_key, signature")
        if record["algorithm"] != ALGORITHM:
            raise ValueError(f"algorithm {record['algorithm']!r}, expected {ALGORITHM!r}")
        public = base64.b64decode(record["public_key"], validate=True)
        signature = base64.b64decode(record["signature"], validate=True)
    except (ValueError, TypeError, RecursionError) as exc:  # binascii.Error and JSONDecodeError are ValueErrors
        raise ArtifactError(f"the signature member is malformed ({exc})") from None
    if len(public) != 32 or len(signature) != 64:
        raise ArtifactError(f"the signature member is malformed (key {len(public)} bytes, signature {len(signature)}; Ed25519 has 32 and 64)")
    return public, signature


def _raw(public_key):
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64(data):
    return base64.b64encode(data).decode()


def _read_key_file(path):
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"{path}: larger than {_MAX_KEY_FILE} bytes, not a key file")
    return data


def _write_new(path, data, overwrite=True, mode=0o644):
    """Write ``data`` via a temporary name (made 0600, then ``mode``), so a reader never sees half a key;
    with ``overwrite=False`` an existing file is an error (a hard link, unlike a rename, never replaces)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileError(f"{path} exists: refusing to overwrite a key") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
