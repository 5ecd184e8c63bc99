"""Small helpers every stage uses: atomic writes, JSON Lines, hashing, dotted imports, process liveness."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from semrl import SemrlError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | Path, check: Callable[[], None] = lambda: None) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` only when the block ends without an error and `check()` passes
    (e.g. a size and sha256 test): written to a temp file in the same folder, fsynced, renamed. Readers
    never see half a file, and a failed or interrupted write leaves nothing behind but the old file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as e:
        raise SemrlError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        check()
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):  # disk full, file size or quota limit
            raise SemrlError(f"{path}: cannot write ({e.strerror}: disk full or a file size limit); nothing "
                             "was written, free space and rerun") from None
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SemrlError(f"{path}:{lineno}: invalid JSON line ({e.msg} at column {e.colno})") from None
    return records


def import_dotted(path: str) -> Any:
    """The object at `package.module.attr` (or `package.module:attr`); a SemrlError names what failed."""
    module, _, attr = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise SemrlError(f"{path!r}: cannot import ({e})") from None


_LEGACY_STAMP = 1e8  # a start stamp above this is an epoch time (psutil create_time, before 2026-12): boot-relative ones are far smaller


def process_start(pid: int | None = None) -> float:
    """When process `pid` (default: this one) started, as a stamp that, with its PID, names it for its whole
    life: on Linux the seconds since boot at which it started (/proc/<pid>/stat, field 22). psutil's
    create_time adds to that the boot time *as the wall clock sees it now*, which moves whenever the clock is
    stepped (a VM resumed from a pause, an NTP correction) — a live server or flow then looked like another
    process. Elsewhere: psutil's create_time. Raises psutil.NoSuchProcess when the process is gone."""
    import psutil

    pid = os.getpid() if pid is None else pid
    if not Path("/proc/self/stat").exists():  # not Linux: one scale for every process, never two
        return psutil.Process(pid).create_time()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        raise psutil.NoSuchProcess(pid) from None
    except PermissionError:
        raise psutil.AccessDenied(pid) from None
    # The command name (field 2) may hold spaces and parentheses: the fields after its last ')' start at 3.
    return int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")


def _stamp(pid: int, started: float) -> tuple[float, float]:
    """Process `pid`'s start on the scale of a recorded stamp `started`, and the tolerance of that scale (a
    record older than process_start holds a psutil create_time, compared as before, to within a second)."""
    import psutil

    if started > _LEGACY_STAMP:
        return psutil.Process(pid).create_time(), 1.0
    return process_start(pid), 1e-6


def same_start(pid: int, started: float) -> bool:
    """Whether process `pid` is the one recorded with start stamp `started`."""
    stamp, tolerance = _stamp(pid, started)
    return abs(stamp - started) < tolerance


def started_since(pid: int, started: float) -> bool:
    """Whether process `pid` started with or after the one recorded with start stamp `started`."""
    stamp, tolerance = _stamp(pid, started)
    return stamp > started - tolerance


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether process `pid` runs (a zombie does not count; one of another user does) and, with `started`
    (its process_start stamp, recorded when it started), is still that process: PIDs are reused."""
    import psutil

    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or same_start(pid, started)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return started is None
    return True
