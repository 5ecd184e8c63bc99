"""DVC stage `fetch`: get every file in data/sources.tsv into data/raw/, verified by sha256.

Downloads run in parallel with timeouts and bounded retries (exponential backoff with jitter) for
transient failures (connection errors, timeouts, HTTP 408/429/5xx, truncated bodies). Every file is
written to a temp file in the destination folder and renamed only after its size and sha256 match, so
an interrupted or corrupted download never becomes a valid file. With a mirror configured
(SEMRL_DATA_MIRROR, or `fetch.mirror` in params.yaml) files are read from the mirror instead of the
network, through the same verification.

Tables declared in `fetch.tables` (see semrl.data.tables) follow: a file is downloaded (or copied) the same
way; a Hugging Face dataset split is exported to JSONL from a local folder, the mirror's snapshot
(`<mirror>/huggingface/datasets/<id>/<revision>/`) or the hub. Each gets a provenance record beside it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import requests
from tqdm import tqdm

from semrl import SemrlError
from semrl.core.config import Config, FetchConfig
from semrl.core.io import atomic_file, atomic_write_text, sha256_file
from semrl.data.cldr import GENERATED, babel_version
from semrl.data.sources import Source, mirror_relpath, read_sources, safe_relpath
from semrl.data.tables import TableSource, read_tables, unpinned

MIRROR_ENV = "SEMRL_DATA_MIRROR"
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 1 << 16


class FetchError(SemrlError):
    """A file that cannot be had or verified; the message is one line naming the source and URL."""


class TransientError(Exception):
    """A failure worth retrying."""


@dataclass
class FetchResult:
    fetched: int = 0
    up_to_date: int = 0
    skipped: int = 0
    bytes: int = 0


def _verify(src: Source, size: int, digest: str) -> None:
    # A user's table may come without a pinned hash or size; sources.tsv always has both.
    if (src.sha256 is not None and digest != src.sha256) or (src.bytes is not None and size != src.bytes):
        raise FetchError(
            f"{src.name}: sha256 mismatch for {src.url}: expected {src.sha256} ({src.bytes} bytes), "
            f"got {digest} ({size} bytes)"
        )


class _HashingWriter:
    """Counts and hashes what is written to the file under it."""

    def __init__(self, file: BinaryIO):
        self.file, self.hash, self.size = file, hashlib.sha256(), 0

    def write(self, block: bytes) -> None:
        self.file.write(block)
        self.hash.update(block)
        self.size += len(block)


@contextlib.contextmanager
def verified_file(src: Source, dest: Path) -> Iterator[_HashingWriter]:
    """A writer whose bytes become `dest` only if the block succeeds and size and sha256 match `src`."""
    writer: _HashingWriter | None = None
    with atomic_file(dest, check=lambda: _verify(src, writer.size, writer.hash.hexdigest())) as f:
        writer = _HashingWriter(f)
        yield writer


_local = threading.local()


def _session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
        _local.session.headers["User-Agent"] = "semrl-fetch/0.1"
    return _local.session


def _download_once(src: Source, dest: Path, timeout_s: float, progress: Callable[[int], None]) -> int:
    with verified_file(src, dest) as sink:
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
        if src.bytes is not None and sink.size < src.bytes:
            raise TransientError(f"truncated body: {sink.size} of {src.bytes} bytes")
    return sink.size


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
    return copy_verified(src, path, dest, progress)


def copy_verified(src: Source, path: Path, dest: Path, progress: Callable[[int], None] = lambda n: None) -> int:
    """Copy a local file to dest through the same size + sha256 check as a download."""
    with verified_file(src, dest) as sink, path.open("rb") as f:
        while block := f.read(CHUNK):
            sink.write(block)
            progress(len(block))
    return sink.size


def generate_cldr(src: Source, dest: Path) -> int:
    expected = src.url.removeprefix("babel:")
    if babel_version() != expected:
        raise FetchError(f"{src.name}: generated from babel {babel_version()}, but {src.url} is pinned")
    if src.name not in GENERATED:
        raise FetchError(f"{src.name}: no CLDR generator for this path (known: {', '.join(GENERATED)})")
    with verified_file(src, dest) as sink:
        sink.write(GENERATED[src.name]())
    return sink.size


def _is_current(src: Source, dest: Path) -> bool:
    if not dest.is_file() or dest.stat().st_size != src.bytes:
        return False
    return sha256_file(dest) == src.sha256


def _in_parallel(jobs: list[tuple[Source, Callable[[], int], Path]], workers: int, result: FetchResult) -> list[str]:
    """Run (source, job returning bytes written, destination) jobs on a thread pool, counting into `result`;
    every failure as one line naming its source (all collected, none stops the others)."""
    errors = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(job): (src, dest) for src, job, dest in jobs}
        for fut in as_completed(futures):
            src, dest = futures[fut]
            try:
                result.bytes += fut.result()
                result.fetched += 1
            except SemrlError as e:
                errors.append(str(e))
            except OSError as e:
                errors.append(f"{src.name}: cannot write {dest}: {e.strerror}")
    return errors


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

    with bar:
        errors = _in_parallel([(src, lambda src=src: one(src), cfg.dest / src.name) for src in todo], cfg.workers,
                              result)
    if errors:
        raise FetchError("\n".join(sorted(errors)) + f"\nfetch failed for {len(errors)} of {len(todo)} files")
    return result


MANIFEST = "MANIFEST.tsv"  # a mirror's index: url, sha256, bytes, licence, mirror_path (shared/corpora's layout)


def build_mirror(sources: list[Source], mirror: Path, cfg: FetchConfig, show_progress: bool = True) -> FetchResult:
    """Download every URL source into a mirror laid out as shared/corpora (`<mirror>/<mirror path>`, each
    file sha256-verified, atomic), then write its MANIFEST.tsv last: a mirror with a manifest is complete.
    What is already there and verifies is kept. The test suite builds its corpus cache with it."""
    result = FetchResult()
    todo = []
    for src in (s for s in sources if s.type == "url"):
        dest = mirror / mirror_relpath(src.url)
        if _is_current(src, dest):
            result.up_to_date += 1
        else:
            todo.append((src, dest))
    with tqdm(total=sum(s.bytes or 0 for s, _ in todo), unit="B", unit_scale=True, desc=f"mirror {mirror}",
              disable=not show_progress or not todo) as bar:
        errors = _in_parallel([(src, lambda src=src, dest=dest: download(src, dest, cfg, bar.update), dest)
                               for src, dest in todo], cfg.workers, result)
    if errors:
        raise FetchError(f"{len(errors)} of {len(todo)} files could not be had, the first: {sorted(errors)[0]}")
    rows = ["url\tsha256\tbytes\tlicence\tmirror_path"] + [
        f"{s.url}\t{s.sha256}\t{s.bytes}\t{s.licence}\t{mirror_relpath(s.url)}" for s in sources if s.type == "url"]
    atomic_write_text(mirror / MANIFEST, "\n".join(rows) + "\n")
    return result


# ---------------------------------------------------------------- tables (fetch.tables)

HF_MIRROR = "huggingface/datasets"  # <mirror>/huggingface/datasets/<id>/<revision>/: a snapshot of the repo


def _as_source(table: TableSource) -> Source:
    return Source(table.filename, table.name, "url", str(table.url), table.sha256, table.bytes, table.licence)


def _load_hf(table: TableSource, mirror: Path | None):
    """(dataset split, the revision it is) from a local folder, the mirror's snapshot or the hub."""
    import datasets

    folder = None if table.is_hub else Path(str(table.dataset))
    if folder is None and mirror:
        folder = mirror / HF_MIRROR / safe_relpath(f"{table.dataset}/{table.revision}", f"{table.name}: dataset@revision")
        if not folder.is_dir():
            raise FetchError(f"{table.name}: {table.dataset}@{table.revision} missing from mirror {mirror} "
                             f"(expected a snapshot folder {folder})")
    try:
        if folder is not None:
            if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
                ds = datasets.load_from_disk(str(folder))  # written by save_to_disk
                if isinstance(ds, datasets.DatasetDict):
                    if table.split not in ds:
                        raise ValueError(f"Unknown split {table.split!r}; available: {list(ds)}")
                    ds = ds[table.split]
            else:
                ds = datasets.load_dataset(str(folder), name=table.config, split=table.split)
            return ds, table.revision
        from huggingface_hub import HfApi

        resolved = HfApi().dataset_info(str(table.dataset), revision=table.revision).sha
        return datasets.load_dataset(str(table.dataset), name=table.config, split=table.split,
                                     revision=resolved), resolved
    except FetchError:
        raise
    except Exception as e:  # datasets/hub raise many kinds (missing split, config, repo, offline)
        where = folder or f"{table.dataset}@{table.revision}"
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise FetchError(f"{table.name}: cannot load {where} (config {table.config!r}, split {table.split!r}): "
                         f"{first}") from None


def _export_hf(table: TableSource, dest: Path, mirror: Path | None) -> dict[str, Any]:
    """The mapped columns of one split as JSONL (one row per line, row order kept)."""
    ds, revision = _load_hf(table, mirror)
    wanted = list(dict.fromkeys(table.columns.values()))
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise FetchError(f"{table.name}: columns {missing} not in {table.dataset} split {table.split} "
                         f"(has: {', '.join(ds.column_names)}); fix fetch.tables columns")
    rows = 0
    with verified_file(_as_source(table), dest) as sink:
        for batch in tqdm(ds.select_columns(wanted).iter(batch_size=1000), total=-(-len(ds) // 1000),
                          desc=f"export {table.name}", unit="k rows", disable=len(ds) < 10_000):
            for values in zip(*(batch[c] for c in wanted)):
                line = json.dumps(dict(zip(wanted, values)), ensure_ascii=False, default=str) + "\n"
                sink.write(line.encode("utf-8"))
                rows += 1
    return {"rows": rows, "resolved_revision": revision}


def _table_current(table: TableSource, root: Path) -> bool:
    prov = root / table.provenance
    if not prov.is_file() or not (root / table.filename).is_file():
        return False
    try:
        record = json.loads(prov.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return record.get("table") == table.describe() and record.get("sha256") == sha256_file(root / table.filename)


def fetch_table(table: TableSource, cfg: FetchConfig) -> int:
    """Get one table into cfg.dest/tables/ and write its provenance; returns its size in bytes."""
    dest = cfg.dest / table.filename
    extra: dict[str, Any] = {}
    if table.type == "hf":
        extra = _export_hf(table, dest, cfg.mirror)
    elif table.is_remote and cfg.mirror:
        copy_from_mirror(_as_source(table), dest, cfg.mirror)
    elif table.is_remote:
        download(_as_source(table), dest, cfg)
    else:
        path = Path(str(table.url).removeprefix("file://"))
        if not path.is_file():
            raise FetchError(f"{table.name}: {path} not found (fetch.tables url)")
        copy_verified(_as_source(table), path, dest)
    record = {"table": table.describe(), **extra, "sha256": sha256_file(dest), "bytes": dest.stat().st_size}
    atomic_write_text(cfg.dest / table.provenance, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    return record["bytes"]


def fetch_tables(tables: list[TableSource], cfg: FetchConfig, result: FetchResult) -> None:
    """Tables one at a time (a hub export is CPU-bound); all failures reported together."""
    errors = []
    for table in tables:
        if _table_current(table, cfg.dest):
            result.up_to_date += 1
            continue
        try:
            result.bytes += fetch_table(table, cfg)
            result.fetched += 1
        except SemrlError as e:
            errors.append(str(e))
        if unpinned(table):
            print(f"fetch: {table.name}: revision {table.revision!r} is not a commit; the commit it resolved to is "
                  f"in {cfg.dest / table.provenance} (pin it in fetch.tables)")
    known = {t.filename for t in tables} | {t.provenance for t in tables}
    for stale in sorted((cfg.dest / "tables").glob("*")) if (cfg.dest / "tables").is_dir() else []:
        if f"tables/{stale.name}" not in known:  # a table removed from params must leave data/raw too
            stale.unlink()
    if errors:
        raise FetchError("\n".join(errors) + f"\nfetch failed for {len(errors)} of {len(tables)} tables")


def with_mirror(cfg: FetchConfig) -> FetchConfig:
    """The fetch settings in force: SEMRL_DATA_MIRROR, when set, takes the place of `fetch.mirror`."""
    mirror = os.environ.get(MIRROR_ENV) or cfg.mirror
    return cfg.model_copy(update={"mirror": Path(mirror) if mirror else None})


def run(config: Config) -> FetchResult:
    cfg = with_mirror(config.fetch)
    if cfg.mirror and not cfg.mirror.is_dir():
        raise FetchError(f"mirror {cfg.mirror} is not a directory (set by {MIRROR_ENV} or fetch.mirror)")
    tables = read_tables(cfg.tables)  # validated before anything is downloaded
    result = fetch(read_sources(cfg.sources), cfg)
    fetch_tables(tables, cfg, result)
    return result
