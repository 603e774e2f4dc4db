"""Load every artifact a job file lists, in this one process, and print each outcome as a JSON line.

The tamper tests run this as a subprocess: a crash (SIGSEGV, SIGBUS) then ends this process, is seen by
the test as the outcome of the case that was being loaded, and the test restarts it for the remaining
cases. Usage: python load_worker.py JOBS.json, JOBS being [{"id", "path", "options"}].
"""

import json
import sys
import warnings

from fedskel.runtime import ArtifactError, load


def main(jobs_path):
    with open(jobs_path) as handle:
        jobs = json.load(handle)
    for job in jobs:
        print(json.dumps({"start": job["id"]}), flush=True)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                load(job["path"], **job["options"])
            outcome = {"outcome": "loaded", "warnings": [str(w.message) for w in caught]}
        except ArtifactError as exc:
            outcome = {"outcome": "refused", "message": str(exc)}
        except BaseException as exc:  # noqa: BLE001  what escapes is exactly what the test looks for
            outcome = {"outcome": "escaped", "type": type(exc).__name__, "message": str(exc)[:500]}
        print(json.dumps({"id": job["id"], **outcome}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
