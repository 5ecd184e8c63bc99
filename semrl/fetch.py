"""DVC stage `fetch`: get every file in data/sources.tsv into data/raw/, verified by sha256.

Downloads run in parallel with timeouts and bounded retries (exponential backoff with jitter) for
transient failures (connection errors, timeouts, HTTP 408/429/5xx, truncated bodies). Every file is
written to a temp file in the destination folder and renamed only after its size and sha256 match, so
an interrupted or corrupted download never becomes a valid file. With a mirror configured
(SEMRL_DATA_MIRROR, or `fetch.mirror` in params.yaml) files are read from the mirror instead of the
network, through the same verification.
"""
from __future__ import annotations

import hashlib
import os
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests
from tqdm import tqdm

from semrl import SemrlError
from semrl.cldr import babel_version, cldr_pairs_tsv
from semrl.io import sha256_file
from semrl.sources import Source, mirror_relpath, read_sources

MIRROR_ENV = "SEMRL_DATA_MIRROR"
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 1 << 16


class FetchError(SemrlError):
    """A file that cannot be had or verified; the message is one line naming the source and URL."""


class TransientError(Exception):
    """A failure worth retrying."""


@dataclass
class FetchConfig:
    dest: Path
    mirror: Path | None = None
    workers: int = 8
    timeout_s: float = 30.0
    retries: int = 4
    backoff_s: float = 1.0
    cldr: bool = True

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "FetchConfig":
        p = params["fetch"]
        mirror = os.environ.get(MIRROR_ENV) or p.get("mirror")
        return cls(
            dest=Path(p["dest"]),
            mirror=Path(mirror) if mirror else None,
            workers=int(p["workers"]),
            timeout_s=float(p["timeout_s"]),
            retries=int(p["retries"]),
            backoff_s=float(p["backoff_s"]),
            cldr=bool(p["cldr"]),
        )


@dataclass
class FetchResult:
    fetched: int = 0
    up_to_date: int = 0
    skipped: int = 0
    bytes: int = 0


def _verify(src: Source, size: int, digest: str) -> None:
    if digest != src.sha256 or size != src.bytes:
        raise FetchError(
            f"{src.name}: sha256 mismatch for {src.url}: expected {src.sha256} ({src.bytes} bytes), "
            f"got {digest} ({size} bytes)"
        )


class _Sink:
    """A temp file beside the destination that hashes what is written and becomes the file on commit()."""

    def __init__(self, dest: Path):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        self.dest, self.tmp, self.file = dest, Path(tmp), os.fdopen(fd, "wb")
        self.hash, self.size = hashlib.sha256(), 0

    def write(self, block: bytes) -> None:
        self.file.write(block)
        self.hash.update(block)
        self.size += len(block)

    def commit(self, src: Source) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        _verify(src, self.size, self.hash.hexdigest())
        os.replace(self.tmp, self.dest)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


_local = threading.local()


def _session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
        _local.session.headers["User-Agent"] = "semrl-fetch/0.1"
    return _local.session


def _download_once(src: Source, dest: Path, timeout_s: float, progress: Callable[[int], None]) -> int:
    sink = _Sink(dest)
    try:
        try:
            with _session().get(src.url, stream=True, timeout=(timeout_s, timeout_s)) as r:
                if r.status_code in RETRY_STATUS:
                    raise TransientError(f"HTTP {r.status_code}")
                if r.status_code != 200:
                    raise FetchError(f"{src.name}: HTTP {r.status_code} for {src.url} (not retried)")
                for block in r.iter_content(CHUNK):
                    sink.write(block)
                    progress(len(block))
        except requests.exceptions.ChunkedEncodingError as e:
            raise TransientError(f"truncated body after {sink.size} bytes ({e.__class__.__name__})") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise TransientError(f"{e.__class__.__name__}") from None
        if sink.size < src.bytes:
            raise TransientError(f"truncated body: {sink.size} of {src.bytes} bytes")
        sink.commit(src)
        return sink.size
    finally:
        sink.discard()


def download(src: Source, dest: Path, cfg: FetchConfig, progress: Callable[[int], None] = lambda n: None) -> int:
    """Download with bounded retries; raises FetchError naming the source, URL and last failure."""
    last = ""
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1) * (1 + random.random() / 2))
        try:
            return _download_once(src, dest, cfg.timeout_s, progress)
        except TransientError as e:
            last = str(e)
    raise FetchError(f"{src.name}: failed after {cfg.retries + 1} attempts from {src.url}: {last}")


def copy_from_mirror(src: Source, dest: Path, mirror: Path, progress: Callable[[int], None] = lambda n: None) -> int:
    path = mirror / mirror_relpath(src.url)
    if not path.is_file():
        raise FetchError(f"{src.name}: missing from mirror {mirror} (expected {path}) for {src.url}")
    sink = _Sink(dest)
    try:
        with path.open("rb") as f:
            while block := f.read(CHUNK):
                sink.write(block)
                progress(len(block))
        sink.commit(src)
        return sink.size
    finally:
        sink.discard()


def generate_cldr(src: Source, dest: Path) -> int:
    expected = src.url.removeprefix("babel:")
    if babel_version() != expected:
        raise FetchError(f"{src.name}: generated from babel {babel_version()}, but {src.url} is pinned")
    data = cldr_pairs_tsv()
    sink = _Sink(dest)
    try:
        sink.write(data)
        sink.commit(src)
        return sink.size
    finally:
        sink.discard()


def _is_current(src: Source, dest: Path) -> bool:
    if not dest.is_file() or dest.stat().st_size != src.bytes:
        return False
    return sha256_file(dest) == src.sha256


def fetch(sources: list[Source], cfg: FetchConfig, show_progress: bool = True) -> FetchResult:
    """Get every source into cfg.dest; collect all failures and raise them together, one line each."""
    result = FetchResult()
    # Leftovers of a killed run are never valid files; they must not end up inside the DVC output.
    for stale in cfg.dest.rglob(".*.part") if cfg.dest.is_dir() else []:
        stale.unlink()
    todo = []
    for src in sources:
        if src.type == "cldr" and not cfg.cldr:
            result.skipped += 1
        elif _is_current(src, cfg.dest / src.name):
            result.up_to_date += 1
        else:
            todo.append(src)
    lock = threading.Lock()
    bar = tqdm(
        total=sum(s.bytes for s in todo), unit="B", unit_scale=True, desc="fetch" + (" (mirror)" if cfg.mirror else ""),
        disable=not show_progress or not todo,
    )

    def progress(n: int) -> None:
        with lock:
            bar.update(n)

    def one(src: Source) -> int:
        dest = cfg.dest / src.name
        if src.type == "cldr":
            return generate_cldr(src, dest)
        if cfg.mirror:
            return copy_from_mirror(src, dest, cfg.mirror, progress)
        return download(src, dest, cfg, progress)

    errors = []
    with bar, ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        futures = {pool.submit(one, src): src for src in todo}
        for fut in as_completed(futures):
            try:
                result.bytes += fut.result()
                result.fetched += 1
            except SemrlError as e:
                errors.append(str(e))
            except OSError as e:
                errors.append(f"{futures[fut].name}: cannot write {cfg.dest / futures[fut].name}: {e.strerror}")
    if errors:
        raise FetchError("\n".join(sorted(errors)) + f"\nfetch failed for {len(errors)} of {len(todo)} files")
    return result


def run(params: dict[str, Any]) -> FetchResult:
    cfg = FetchConfig.from_params(params)
    if cfg.mirror and not cfg.mirror.is_dir():
        raise FetchError(f"mirror {cfg.mirror} is not a directory (set by {MIRROR_ENV} or fetch.mirror)")
    return fetch(read_sources(params["fetch"]["sources"]), cfg)
