"""Extra corpora as tables — a Hugging Face dataset split or a TSV/CSV/JSONL/Parquet file — declared in
`fetch.tables`: their validation, where `fetch` puts them, and row reading with column mapping for `prepare`.

A table feeds one task (`mt`: bo + zh, `headline`: title + body) and goes whole to one split, or through
the seeded document split (`use: split`). Both types keep their provenance beside the data in
`data/raw/tables/<name>.source.json` (for a hub dataset the commit the revision resolved to)."""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from semrl import SemrlError

TABLE_TYPES = ("hf", "file")
FORMATS = ("tsv", "csv", "jsonl", "parquet")
TASK_FIELDS = {"mt": ("bo", "zh"), "headline": ("title", "body")}  # the fields of each prepared data kind
OPTIONAL_FIELDS = ("doc",)  # rows sharing a doc value stay in one split (with `use: split`)
USES = ("train", "dev", "test", "split")
# Names the built-in corpora use in the ledger; a table must not be mistaken for one of them.
RESERVED = ("lotsawa", "cldr", "nanhai_news", "nanhai_childrens_lit", "cmrc_trial", "cmrc_dev", "xiehouyu")
TABLE_DIR = "tables"
_HEX40 = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class TableSource:
    name: str  # data/raw/tables/<name>.<format>; the source name in stats and quarantine
    type: str  # "hf": a Hugging Face dataset (hub id or local folder); "file": URL or local path
    task: str
    columns: dict[str, str]  # our field -> the table's column
    use: str = "train"
    licence: str = ""
    dataset: str | None = None  # hf
    revision: str | None = None  # hf: a commit (40 hex) pins; a branch or tag is resolved and recorded
    config: str | None = None  # hf
    split: str = "train"  # hf
    url: str | None = None  # file: http(s) URL or local path
    format: str | None = None  # file: tsv|csv|jsonl|parquet (default from the URL's suffix); hf exports jsonl
    sha256: str | None = None  # file: required for URLs, checked for local files when given
    bytes: int | None = None  # file: optional, catches truncation early
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def filename(self) -> str:
        return f"{TABLE_DIR}/{self.name}.{self.format}"

    @property
    def provenance(self) -> str:
        return f"{TABLE_DIR}/{self.name}.source.json"

    @property
    def is_remote(self) -> bool:
        return bool(self.url) and self.url.split(":", 1)[0] in ("http", "https")

    @property
    def is_hub(self) -> bool:
        """A hub id rather than a local dataset folder (a folder that exists wins, as in `datasets`)."""
        return self.type == "hf" and not Path(str(self.dataset)).is_dir()

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "spec"}


def _format_of(url: str) -> str | None:
    suffix = PurePosixPath(url.split("?", 1)[0]).suffix.lower().lstrip(".")
    aliases = {"tab": "tsv", "ndjson": "jsonl"}
    return aliases.get(suffix, suffix) if aliases.get(suffix, suffix) in FORMATS else None


def parse_table(spec: Any, where: str) -> tuple[TableSource | None, list[str]]:
    """(table, problems) for one `fetch.tables` entry; `where` prefixes every problem."""
    if not isinstance(spec, dict):
        return None, [f"{where}: a mapping with name, type, task, columns, got {spec!r}"]
    problems = []
    known = {f for f in TableSource.__dataclass_fields__ if f != "spec"}
    unknown = sorted(set(spec) - known)
    if unknown:
        problems.append(f"{where}: unknown keys {unknown} (known: {', '.join(sorted(known))})")
    name = str(spec.get("name") or "")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        problems.append(f"{where}: name must be lowercase letters, digits, _ or -, got {name!r}")
    elif name in RESERVED:
        problems.append(f"{where}: name {name!r} is a built-in corpus")
    type_, task, use = spec.get("type"), spec.get("task"), spec.get("use", "train")
    if type_ not in TABLE_TYPES:
        problems.append(f"{where}: type must be one of {', '.join(TABLE_TYPES)}, got {type_!r}")
    if task not in TASK_FIELDS:
        problems.append(f"{where}: task must be one of {', '.join(TASK_FIELDS)}, got {task!r}")
    if use not in USES:
        problems.append(f"{where}: use must be one of {', '.join(USES)}, got {use!r}")
    columns = spec.get("columns")
    if not isinstance(columns, dict) or not all(isinstance(v, str) and v for v in columns.values()):
        problems.append(f"{where}: columns must map our fields to the table's column names, got {columns!r}")
        columns = {}
    elif task in TASK_FIELDS:
        missing = [f for f in TASK_FIELDS[task] if f not in columns]
        extra = [f for f in columns if f not in TASK_FIELDS[task] + OPTIONAL_FIELDS]
        if missing:
            problems.append(f"{where}: columns lacks {missing} (task {task} needs {', '.join(TASK_FIELDS[task])})")
        if extra:
            problems.append(f"{where}: columns has unknown fields {extra} "
                            f"(known: {', '.join(TASK_FIELDS[task] + OPTIONAL_FIELDS)})")
    fmt = spec.get("format")
    if type_ == "hf":
        if not spec.get("dataset"):
            problems.append(f"{where}: type hf needs dataset (a hub id such as KEVVVV/CMHG, or a local folder)")
        elif not Path(str(spec["dataset"])).is_dir() and not spec.get("revision"):
            problems.append(f"{where}: hub dataset {spec['dataset']} needs a revision (a commit pins it)")
        for key in ("url", "sha256", "bytes"):
            if spec.get(key) is not None:
                problems.append(f"{where}: {key} is for type file; a hub dataset is pinned by its revision")
        if fmt not in (None, "jsonl"):
            problems.append(f"{where}: an hf table is exported as jsonl; format {fmt!r} does not apply")
        fmt = "jsonl"
    elif type_ == "file":
        url = str(spec.get("url") or "")
        if not url:
            problems.append(f"{where}: type file needs url (http(s) URL or local path)")
        fmt = fmt or _format_of(url)
        if fmt not in FORMATS:
            problems.append(f"{where}: format must be one of {', '.join(FORMATS)} (or a URL ending in one), "
                            f"got {fmt!r}")
        sha = spec.get("sha256")
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", str(sha)):
            problems.append(f"{where}: sha256 must be 64 lowercase hex digits, got {sha!r}")
        if url.split(":", 1)[0] in ("http", "https") and sha is None:
            problems.append(f"{where}: a URL needs sha256, so a changed file is caught (sha256sum <file>)")
        if spec.get("bytes") is not None and not (isinstance(spec["bytes"], int) and spec["bytes"] >= 0):
            problems.append(f"{where}: bytes must be a whole number, got {spec['bytes']!r}")
        for key in ("dataset", "revision", "config"):
            if spec.get(key) is not None:
                problems.append(f"{where}: {key} is for type hf")
    if problems:
        return None, problems
    fields_ = {k: v for k, v in spec.items() if k in known}
    fields_.update(format=fmt, use=use, columns=dict(columns))
    if type_ == "hf" and spec.get("revision") is not None:
        fields_["revision"] = str(spec["revision"])
    return TableSource(**fields_, spec=dict(spec)), []


def read_tables(specs: list[Any]) -> list[TableSource]:
    """All `fetch.tables` entries, validated; every problem at once, each naming its entry."""
    tables, problems, seen = [], [], {}
    for i, spec in enumerate(specs):
        where = f"fetch.tables[{i}]" + (f" ({spec['name']})" if isinstance(spec, dict) and spec.get("name") else "")
        table, errs = parse_table(spec, where)
        problems += errs
        if table and table.name in seen:
            problems.append(f"{where}: duplicate name {table.name!r} (first at fetch.tables[{seen[table.name]}])")
        elif table:
            seen[table.name] = i
            tables.append(table)
    if problems:
        raise SemrlError("\n".join(problems))
    return tables


def unpinned(table: TableSource) -> bool:
    """A hub dataset named by a branch or tag: reproducible only through the commit fetch records."""
    return table.is_hub and not _HEX40.fullmatch(str(table.revision))


# ---------------------------------------------------------------- reading rows


@dataclass
class Row:
    line: int  # line in the file (header = line 1 for tsv/csv), or 1-based row number for parquet
    values: dict[str, Any] | None
    error: str = ""


def iter_rows(path: Path, fmt: str) -> Iterator[Row]:
    """Every row of a table file; a row that cannot be parsed comes back with its error, not dropped.

    Rows are kept whole: only a line feed (or CR LF, or a lone CR for TSV/CSV as the csv module reads
    them) ends a row — never U+2028, U+0085 or the other characters `str.splitlines` breaks at, which may
    sit inside a field. TSV is read without quoting (a field may start with `"`); CSV as RFC 4180 (a quoted
    field keeps its line breaks). The rows read are then checked against an independent count of the file's
    records (expected_records): a merge or split of rows is an error naming the file and line."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises its own error kinds for truncated or non-parquet files
            raise SemrlError(f"{path}: not a readable Parquet file ({e})") from None
        for i, values in enumerate(table.to_pylist(), 1):
            yield Row(i, values)
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SemrlError(f"{path}:{line}: not UTF-8 (byte {e.start}); re-encode the file as UTF-8") from None
    if fmt == "jsonl":
        for i, line in enumerate(text.split("\n"), 1):
            line = line.removesuffix("\r")
            if not line.strip():
                continue
            try:
                values = json.loads(line)
            except json.JSONDecodeError as e:
                yield Row(i, None, f"invalid JSON at column {e.colno}: {e.msg}")
                continue
            yield (Row(i, values) if isinstance(values, dict) else Row(i, None, "a JSON object per line expected"))
        return
    yield from _delimited_rows(path, text, fmt)


def _delimited_rows(path: Path, text: str, fmt: str) -> Iterator[Row]:
    dialect = ({"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv"
               else {"delimiter": ",", "quotechar": '"', "doublequote": True, "strict": True})
    reader = csv.reader(io.StringIO(text, newline=""), **dialect)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise SemrlError(f"{path}:1: unreadable header ({e})") from None
    if not header:
        raise SemrlError(f"{path}:1: empty table; the first line must name the columns")
    starts, start = [1], reader.line_num + 1
    while True:
        try:
            cols = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # an unbalanced quote: say where the record began, not where the file ended
            raise SemrlError(f"{path}:{start}: malformed {fmt.upper()} record ({e}); quote a field that holds "
                             'a comma, quote or line break, doubling its quotes ("")') from None
        starts.append(start)
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in cols):
            continue
        if len(cols) != len(header):
            yield Row(line, None, f"{len(cols)} columns, the header has {len(header)}")
            continue
        yield Row(line, dict(zip(header, cols)))
    expected = record_starts(text, fmt)
    if starts != expected:
        where = next((a for a, b in zip(starts, expected) if a != b), min(len(starts), len(expected)) and
                     (starts + expected)[min(len(starts), len(expected))])
        raise SemrlError(f"{path}:{where}: the reader's records ({len(starts)}, header included) differ from the "
                         f"file's ({len(expected)}) from this line on: rows were merged or split; nothing from "
                         "this table is used")


def record_starts(text: str, fmt: str) -> list[int]:
    """The line each record of a TSV or CSV text starts on, found apart from the csv module: TSV, every
    line (a CR LF, CR or LF ends one); CSV, every line that follows a line end outside quotes (an even
    number of `"` so far). A last line without a line end counts too."""
    starts, quotes, line, i, n, open_ = [], 0, 1, 0, len(text), False
    while i < n:
        ch = text[i]
        if not open_:
            starts.append(line)
            open_ = True
        if ch == '"' and fmt == "csv":
            quotes += 1
        if ch in "\r\n":
            if ch == "\r" and i + 1 < n and text[i + 1] == "\n":
                i += 1
            line += 1
            if fmt == "tsv" or quotes % 2 == 0:
                open_ = False
        i += 1
    return starts


def map_columns(table: TableSource, values: dict[str, Any]) -> tuple[dict[str, str] | None, str]:
    """(our fields, "") or (None, why) for one parsed row."""
    out = {}
    for ours, theirs in table.columns.items():
        if theirs not in values:
            return None, f"no column {theirs!r} (has: {', '.join(map(str, values))})"
        v = values[theirs]
        if v is None or (isinstance(v, str) and not v.strip()):
            if ours in TASK_FIELDS[table.task]:
                return None, f"empty {theirs!r}"
            continue
        out[ours] = str(v)
    return out, ""
