"""The JSONL record of a dataset run: one row per clip, resumable, one writer at a time.

    with ResultStore("rows.jsonl", request.settings()) as store:   # takes rows.jsonl.lock
        done = store.load()              # key -> row of the clips already done
        store.append(rows)               # after every batch
        store.finish(keys)               # at the end: rows in input order

Rows are appended and flushed per batch, so an interrupted run loses at most the batch in
flight. `load` reads what an earlier run left and makes it whole before anything is appended:
a torn last line (a write cut short), rows with an `error` (retried) and repeated keys (the
first is kept) are dropped, and the file is rewritten without them.

Every row holds the `settings` that made it. A rerun resumes only a file whose rows were all
made with its own settings; otherwise `load` raises `OtherSettings`, naming what differs, and
changes nothing: a results file is the record of one configuration, and a typo in a flag must
not quietly start replacing a long run's rows. `load(overwrite=True)` starts afresh instead.

The lock is `FILE.lock`, held with `flock` for as long as the store is open: a second run on
the same file is refused at once, and a run that dies releases it with its process.
"""

import fcntl
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class OtherSettings(ValueError):
    """The file holds rows made with other settings."""


class Locked(RuntimeError):
    """Another process is writing the file."""


class ResultStore:
    """One JSON row per clip in `path`, each made with `settings`."""

    def __init__(self, path: str | os.PathLike, settings: Mapping[str, Any]):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # as a row holds them
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock: int | None = None

    def __enter__(self) -> "ResultStore":
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    def lock(self) -> None:
        """Take `FILE.lock`; `Locked`, naming the holder, if another process has it."""
        while self._lock is None:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another run"
                os.close(fd)
                raise Locked(
                    f"{self.path} is being written by {holder} (it holds {self.lock_path}); "
                    "wait for it to finish, or write to another file"
                ) from None
            if _same_file(fd, self.lock_path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"granite-fms pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
                self._lock = fd
            else:  # the holder removed the file between our open and flock: lock the new one
                os.close(fd)

    def unlock(self) -> None:
        if self._lock is not None:
            os.unlink(self.lock_path)
            os.close(self._lock)
            self._lock = None

    def load(self, overwrite: bool = False) -> dict[str, dict[str, Any]]:
        """Key -> row of the clips already done with these settings; `OtherSettings` if the
        file holds rows made with others (unless `overwrite`, which empties it)."""
        if overwrite and self.path.exists():
            self.path.write_bytes(b"")
        if not self.path.is_file():
            return {}
        raw = self.path.read_bytes()
        kept: dict[str, tuple[bytes, dict]] = {}
        dropped = {"torn": 0, "failed": 0, "repeated": 0}
        other: list[dict] = []
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = row["audio_filepath"]
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
                dropped["torn"] += 1
                continue
            if "error" in row:
                dropped["failed"] += 1
            elif key in kept:
                dropped["repeated"] += 1
            elif row.get("settings") != self.settings:
                other.append(row)
            else:
                kept[key] = (line, row)
        if other:
            raise OtherSettings(f"{self.path} holds {self._differences(other)}")
        if any(dropped.values()) or (raw and not raw.endswith(b"\n")):
            logger.warning(
                "%s: dropped %s; rewriting it with the %d finished rows",
                self.path,
                ", ".join(f"{n} {why}" for why, n in dropped.items() if n) or "nothing",
                len(kept),
            )
            self._replace(line for line, _ in kept.values())
        return {key: row for key, (_, row) in kept.items()}

    def _differences(self, rows: list[dict]) -> str:
        """`rows` (made with other settings) in words: how many, and what differs."""
        settings = rows[0].get("settings")
        if not isinstance(settings, dict):
            return f"{len(rows)} rows without recorded settings (an older granite-fms wrote them)"
        keys = sorted(set(settings) | set(self.settings))
        changed = [
            f"{k} {settings.get(k)!r} there, {self.settings.get(k)!r} now"
            for k in keys
            if settings.get(k) != self.settings.get(k)
        ]
        return f"{len(rows)} rows made with other settings ({'; '.join(changed)})"

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        with self.path.open("a", encoding="utf-8") as file:
            file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            file.flush()
            os.fsync(file.fileno())

    def finish(self, order: Sequence[str]) -> None:
        """Rewrite the file with its rows in `order` of their keys (others after them)."""
        if not self.path.is_file():
            return
        lines = [line for line in self.path.read_bytes().split(b"\n") if line.strip()]
        rank = {key: i for i, key in enumerate(order)}
        keys = [json.loads(line)["audio_filepath"] for line in lines]
        ordered = sorted(range(len(lines)), key=lambda i: rank.get(keys[i], len(rank)))
        self._replace(lines[i] for i in ordered)

    def _replace(self, lines) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in lines))
        os.replace(tmp, self.path)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


__all__ = ["Locked", "OtherSettings", "ResultStore"]
