"""Checks of the command line that run before any model loads: output paths, text flags,
torchrun, compile settings. Each raises `UsageError` naming the flag and what is wrong."""

import os
import tempfile
from pathlib import Path

from granite_fms.app.errors import UsageError


def writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """A directory the run will write into: created if missing, and writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there ({e.strerror or e})") from e
    return path


def writable_file(path: str | os.PathLike, flag: str) -> Path:
    """A file the run will write: not a directory, in a writable directory, writable itself."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; it needs a file name")
    writable_dir(path.parent, flag=f"{flag} {path}: its folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path} is not writable")
    return path


def not_blank(value: str | None, flag: str) -> None:
    if value is not None and not value.strip():
        raise UsageError(f"{flag} is blank ({value!r}); give a language, e.g. English")


def torchrun(device_type: str) -> None:
    """`--distributed` needs torchrun's environment."""
    from granite_fms.app.ranks import check_torchrun

    try:
        check_torchrun(device_type)
    except ValueError as e:
        raise UsageError(f"--distributed: {e}") from e


def compile_settings(mode: str | None, backend: str) -> None:
    """`--compile_mode` and `--compile_backend` are values torch.compile knows."""
    import torch._dynamo
    import torch._inductor

    modes = list(torch._inductor.list_mode_options())
    if mode is not None and mode not in modes:
        raise UsageError(f"--compile_mode {mode!r} is not one of torch.compile's modes {modes}")
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        known = sorted({*torch._dynamo.list_backends(), "eager", "aot_eager"})
        raise UsageError(
            f"--compile_backend {backend!r} is not a torch.compile backend: this torch has "
            f"{known} (and the debug ones of torch._dynamo.list_backends(exclude_tags=()))"
        )


__all__ = ["compile_settings", "not_blank", "torchrun", "writable_dir", "writable_file"]
