"""Taking a real artifact apart and putting a tampered one together, as an attacker with a tar tool would."""

import json
import tarfile

from fedskel.runtime.artifact import MANIFEST, SIGNATURE, sha256
from fedskel.runtime.signing import sign_manifest


def members_of(path):
    """[(name, bytes)] of an artifact, in tar order."""
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def tar_of(entries, **member_fields):
    """Tar bytes of [(name, bytes)] or [(name, bytes, {TarInfo field: value})]; ``member_fields`` apply to all.

    Written block by block, so a header may say what its data does not (a size, a type, a link).
    """
    blocks = []
    for name, data, *fields in entries:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        for key, value in {**member_fields, **(fields[0] if fields else {})}.items():
            setattr(info, key, value)
        blocks += [info.tobuf(tarfile.PAX_FORMAT), data, b"\0" * (-len(data) % tarfile.BLOCKSIZE)]
    return b"".join(blocks) + b"\0" * (2 * tarfile.BLOCKSIZE)


def rebuilt(entries, edit_manifest=None, edit_member=None, sign_with=None):
    """[(name, bytes)] with the manifest and/or one member changed, hashes updated to match.

    The old signature is dropped (it no longer verifies); ``sign_with`` signs the result with that key.
    """
    members = {name: data for name, data in entries if name != SIGNATURE}
    manifest = json.loads(members[MANIFEST])
    if edit_member:
        name, change = edit_member
        members[name] = change(members[name])
        manifest["sha256"][name] = sha256(members[name])
    if edit_manifest:
        edit_manifest(manifest)
    members[MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    result = [(MANIFEST, members.pop(MANIFEST))]
    if sign_with is not None:
        result.append((SIGNATURE, sign_manifest(result[0][1], sign_with)))
    return result + list(members.items())


def write(path, entries):
    path.write_bytes(tar_of(entries))
    return path
