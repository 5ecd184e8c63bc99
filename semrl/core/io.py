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


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether process `pid` runs (a zombie does not count; one of another user does) and, with `started`
    (its psutil create_time, recorded when it started), is still that process: PIDs are reused."""
    import psutil

    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return started is None
    return True
