"""One exception type for every input the compiler refuses, so the CLI can map it to exit code 2."""


class CompileError(Exception):
    """A model, option or file the pipeline cannot compile; the message names the culprit."""
