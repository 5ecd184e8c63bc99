"""The committed source list (data/sources.tsv): what `fetch` gets, where it lands, how it is verified."""
from __future__ import annotations

import csv
import re
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from urllib.parse import unquote, urlsplit

from semrl import SemrlError

SOURCE_TYPES = ("url", "cldr")
GITHUB_RAW_HOST = "raw.githubusercontent.com"


@dataclass(frozen=True)
class Source:
    name: str  # path under data/raw/
    source: str  # corpus the file belongs to (licence and attribution are per corpus)
    type: str  # "url": download; "cldr": generate bo-zh name pairs from babel's CLDR data
    url: str  # canonical URL at a pinned commit; for cldr, "babel:<version>"
    sha256: str | None  # None only for a user's table given without a hash (see semrl.data.tables)
    bytes: int | None
    licence: str


COLUMNS = [f.name for f in fields(Source)]


def read_sources(path: str | Path) -> list[Source]:
    """Parse and validate data/sources.tsv; every problem names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SemrlError(f"{path}: source list not found")
    rows = list(csv.reader(path.open(encoding="utf-8", newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0] != COLUMNS:
        raise SemrlError(f"{path}:1: header must be {' '.join(COLUMNS)!r}")
    sources, seen = [], {}
    for lineno, row in enumerate(rows[1:], 2):
        where = f"{path}:{lineno}"
        if len(row) != len(COLUMNS):
            raise SemrlError(f"{where}: expected {len(COLUMNS)} tab-separated columns, found {len(row)}")
        name, source, type_, url, sha, size, licence = row
        if type_ not in SOURCE_TYPES:
            raise SemrlError(f"{where}: unknown type {type_!r} (known: {', '.join(SOURCE_TYPES)})")
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise SemrlError(f"{where}: sha256 must be 64 lowercase hex digits, got {sha!r}")
        if not size.isdigit():
            raise SemrlError(f"{where}: bytes must be a whole number, got {size!r}")
        safe_relpath(name, f"{where}: name (a path inside data/raw)")
        if name in seen:
            raise SemrlError(f"{where}: duplicate name {name!r} (first at line {seen[name]})")
        seen[name] = lineno
        sources.append(Source(name, source, type_, url, sha, int(size), licence))
    return sources


def write_sources(path: str | Path, sources: list[Source]) -> None:
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(astuple(s) for s in sources)


def safe_relpath(path: str, what: str) -> str:
    """A relative path that stays inside its folder: no `..` or `.` part (also once percent-decoded), no
    absolute path, no NUL; else an error naming it."""
    parts = path.split("/")
    if path.startswith("/") or "\x00" in path or "\\" in path or any(p in ("..", ".") for p in parts) or not path:
        raise SemrlError(f"{what}: {path!r} would leave its folder (a `..`, `.`, absolute or empty path part)")
    return path


def mirror_relpath(url: str) -> str:
    """Where a URL's bytes lie in an offline mirror: `github/<owner>/<repo>/<commit>/<path>` for GitHub
    raw files (the layout of shared/corpora), `<host>/<path>` otherwise; percent-escapes decoded — and a
    decoded `..` (%2e%2e) refused, so a URL never reads or writes outside the mirror."""
    parts = urlsplit(url)
    path = unquote(parts.path).lstrip("/")
    rel = f"github/{path}" if parts.netloc == GITHUB_RAW_HOST else f"{parts.netloc}/{path}"
    return safe_relpath(rel, f"mirror path of {url}")


def _logical_name(url: str) -> tuple[str, str]:
    """(name under data/raw, corpus) for a mirrored URL."""
    owner, repo, _commit, *rest = unquote(urlsplit(url).path).lstrip("/").split("/")
    path = "/".join(rest)
    base = rest[-1]
    if (owner, repo) == ("Esukhia", "Corpora"):
        if base.startswith("Writing_Modern_News_"):
            return f"nanhai/news/{base}", "nanhai"
        if base.startswith("Writing_Modern_Children"):
            return f"nanhai/childrens_lit/{base}", "nanhai"
        return f"nanhai/{path}", "nanhai"
    if (owner, repo) == ("OpenPecha-Data", "C0A2DD042"):
        return f"lotsawa/{path}", "lotsawa"
    if (owner, repo) == ("ymcui", "cmrc2018"):
        return f"cmrc2018/{base}", "cmrc2018"
    if (owner, repo) == ("pwxcoo", "chinese-xinhua"):
        return f"xiehouyu/{base}", "xiehouyu"
    return f"{owner}/{repo}/{path}", repo


def sources_from_manifest(manifest: str | Path) -> list[Source]:
    """Derive the source list from a mirror's MANIFEST.tsv (url, sha256, bytes, licence, mirror_path)."""
    manifest = Path(manifest)
    rows = list(csv.DictReader(manifest.open(encoding="utf-8", newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    sources = []
    for lineno, row in enumerate(rows, 2):
        if mirror_relpath(row["url"]) != row["mirror_path"]:
            raise SemrlError(f"{manifest}:{lineno}: mirror_path {row['mirror_path']!r} does not follow the URL layout")
        name, corpus = _logical_name(row["url"])
        sources.append(Source(name, corpus, "url", row["url"], row["sha256"], int(row["bytes"]), row["licence"]))
    return sorted(sources, key=lambda s: s.name)
