"""The one error an artifact that must not be loaded raises, whatever is wrong with it."""


class ArtifactError(Exception):
    """An artifact that is corrupt, tampered, untrusted, of an unknown format, or not runnable here."""
