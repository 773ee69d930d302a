"""Low-level files of a run folder: durable JSON-lines appends, crash repair, locks, process liveness.

JSON-lines files are only ever appended to or truncated in place (never replaced), so an flock on the
file itself serialises writers (exclusive) against readers (shared): a reader never sees half a line
that a live writer is still writing, and a cut last line it does see can only come from a crash.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sfsd.errors import SfsdError

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def timestamp() -> str:
    """Now, as an ISO 8601 UTC string (the format of every time field of a run)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def json_default(value: Any) -> Any:
    """numpy/torch scalars and arrays, paths and sets as plain JSON; anything else as its str."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def plain(data: Any) -> Any:
    """`data` as it reads back from JSON (tuples as lists, numpy numbers as Python numbers)."""
    return json.loads(json.dumps(data, default=json_default))


@contextmanager
def disk_guard(run_id: str) -> Iterator[None]:
    """Turn a disk-full OSError into a one-line SfsdError."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _DISK_FULL or "No space left on device" in str(exc):  # pyarrow gives no errno
            message = f"disk full while writing run {run_id}: free space and resume with the same command"
            raise SfsdError(message) from exc
        raise


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line durably (write, fsync), repairing a line cut by an earlier crash first."""
    data = (json.dumps(record, default=json_default) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _truncate_cut_tail(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path, run_id: str) -> list[dict]:
    """All complete records of a JSON-lines file ([] if absent). A cut last line is dropped and
    truncated away; a corrupt line elsewhere raises SfsdError."""
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            raw = handle.read()
    except FileNotFoundError:
        return []
    *lines, tail = raw.split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            records.append(_parse_line(line, path, number, run_id))
    if tail:
        _repair(path)
    return records


def _parse_line(line: bytes, path: Path, number: int, run_id: str) -> dict:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict):
        raise SfsdError(f"{path.name} of run {run_id} is corrupt at line {number}: "
                        f"delete the run with `sfsd runs delete {run_id}` and run it again")
    return record


def _repair(path: Path) -> None:
    """Truncate a cut last line; silently skip where the file cannot be written (read-only readers)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _truncate_cut_tail(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _truncate_cut_tail(fd: int) -> None:
    """If the file does not end with a newline, truncate it to just after its last newline."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, start + cut + 1)
            return
        end = start
    os.ftruncate(fd, 0)


@contextmanager
def folder_mutex(folder: Path) -> Iterator[None]:
    """A short exclusive flock on the folder itself, around read-modify-write of status.json."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def try_exclusive(fd: int, tries: int = 10) -> bool:
    """Take an exclusive flock without blocking; retry briefly past readers' momentary probes."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.02)
    return False


def lock_held(path: Path) -> bool:
    """Whether some process (this one included) holds the exclusive lock on `path`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def lock_pid(path: Path) -> int | None:
    """The pid the lock holder wrote into the lock file, if any."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: Any) -> bool:
    """Whether process `pid` exists and is not a zombie (Linux /proc, where available)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")
