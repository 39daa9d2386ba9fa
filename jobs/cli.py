"""How every job ends: a user's mistake (pipelines.errors.UserError) prints `error: ...`, exits 2; bugs keep tracebacks.

    if __name__ == "__main__":
        sys.exit(run_job(main))

argparse already prints its own `usage: ... error: ...` and exits 2 (SystemExit passes through untouched).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from pipelines.errors import UserError
from schemas.manifest import ManifestError   # a manifest.json lacking what its reader needs: a corpus that does not fit

USER_ERROR_EXIT = 2
USER_ERRORS = (UserError, ManifestError)


def run_job(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """main(argv)'s exit status; a user's mistake -> `error: <what to do>` on stderr and USER_ERROR_EXIT."""
    try:
        return main(argv) or 0
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
