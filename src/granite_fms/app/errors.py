"""What the command line does with an error: a usage error is one line and exit status 2; an
internal error is one line, its traceback saved to a log file, and exit status 3."""

import os
import tempfile
import time
import traceback
from pathlib import Path


class UsageError(Exception):
    """Bad arguments, configuration or inputs, found before any work: exit status 2."""


_STARTED = time.strftime("%Y%m%d-%H%M%S")


def save_traceback(error: BaseException) -> Path:
    """Append `error`'s traceback to this process's log file in the temporary directory
    (`granite-fms-<start time>-<pid>.log`); its path."""
    path = Path(tempfile.gettempdir()) / f"granite-fms-{_STARTED}-{os.getpid()}.log"
    with path.open("a", encoding="utf-8") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.write("".join(traceback.format_exception(error)) + "\n")
    return path


__all__ = ["UsageError", "save_traceback"]
