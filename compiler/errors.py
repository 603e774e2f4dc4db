"""One exception type for every input the compiler refuses, so the CLI can map it to exit code 2."""


class CompileError(Exception):
    """A model, option or file the pipeline cannot compile; the message names the culprit."""


def tvm_reason(exc):
    """The first line of a TVM exception when it is written for people, else None.

    TVM's internal checks ("Check failed: (partials.size() == call->args.size()) is false") describe its
    own invariants, not the user's model; callers say what failed in their own words instead.
    """
    text = str(exc).strip()
    if not text or "Check failed" in text or type(exc).__name__ == "InternalError":
        return None
    return text.splitlines()[0]
