"""DVC stage `prepare`: clean, normalise, split and account for every raw record.

Outputs (under `prepare.out_dir`): `mt/{train,dev,test}.jsonl`, `headline/{train,dev,test}.jsonl`,
`lm/{zh,bo}.txt`, `general/cmrc_dev.jsonl`, `quarantine.jsonl` and `stats.json`. Nothing is dropped
silently: a record is either written to an output or to the quarantine with its file, line and reason,
and the stage fails if kept + quarantined != input for any source.

Splits are by document group (a Lotsawa text, a news article; documents sharing any text form one
group, since several Lotsawa texts are republished under two IDs), seeded. Exact duplicates are removed within a
split; a text that appears in two splits (either side of a pair, title or body of an article) is
leakage: evaluation splits are kept whole and the record is quarantined from the later split in the
order test, dev, train, so the training split gives way.

Tables from `fetch.tables` (a user's or a hub corpus) join the MT or headline records through the same
normalisation, checks, de-duplication and leakage rules, each whole in one split or split on its own.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from semrl import SemrlError
from semrl.core.config import Config, PrepareGeneral, PrepareHeadline, PrepareLM, PrepareMT
from semrl.core.io import atomic_write_text, write_jsonl
from semrl.core.text import (
    BO_OPENERS,
    BO_SHADS,
    bo_syllables,
    decode_lines,
    decode_utf8,
    desegment,
    normalize_bo,
    normalize_zh,
    script_counts,
    script_share,
    strip_invisible,
    strip_openers,
)
from semrl.data.tables import TASK_FIELDS, TableSource, iter_rows, map_columns, read_tables

SPLITS = ("train", "dev", "test")
# The order in which splits claim a text: evaluation splits first, so leakage is taken out of train.
CLAIM_ORDER = ("test", "dev", "train")
EXCERPT = 120


# ---------------------------------------------------------------- accounting


@dataclass
class Ledger:
    """Counts input units per source and collects quarantine records."""

    inputs: Counter = field(default_factory=Counter)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)

    def take(self, source: str, n: int = 1) -> None:
        self.inputs[source] += n

    def reject(self, source: str, file: str, line: int | None, reason: str, detail: str = "", text: str = "",
               offset: int | None = None) -> None:
        self.quarantine.append({
            "source": source, "file": file, "line": line, "offset": offset, "reason": reason,
            "detail": detail, "text": text[:EXCERPT],
        })

    def check(self, kept: Counter) -> dict[str, dict[str, int]]:
        rejected = Counter(q["source"] for q in self.quarantine)
        table, bad = {}, []
        for source in sorted(set(self.inputs) | set(kept) | set(rejected)):
            row = {"input": self.inputs[source], "kept": kept[source], "quarantined": rejected[source]}
            table[source] = row
            if row["input"] != row["kept"] + row["quarantined"]:
                bad.append(f"{source}: input {row['input']} != kept {row['kept']} + quarantined {row['quarantined']}")
        if bad:
            raise SemrlError("prepare: records lost or invented: " + "; ".join(bad))
        return table


def _rel(path: Path, raw: Path) -> str:
    return path.relative_to(raw).as_posix()


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SemrlError(f"{path}: cannot read ({e.strerror})") from None


def _load_json(path: Path) -> Any:
    """Whole-file JSON inputs are benchmarks or word lists: a corrupt one stops the stage with file:line:col."""
    if not path.is_file():
        raise SemrlError(f"{path}: missing (run `dvc repro fetch` or `semrl fetch`)")
    decoded = decode_utf8(_read_bytes(path))
    if decoded.text is None:
        raise SemrlError(f"{path}: {decoded.detail}")
    if not decoded.text.strip():
        raise SemrlError(f"{path}: empty file")
    try:
        return json.loads(decoded.text)
    except json.JSONDecodeError as e:
        raise SemrlError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg}); truncated or corrupt file?") from None


def _glob(raw: Path, pattern: str, what: str) -> list[Path]:
    files = sorted(raw.glob(pattern))
    if not files:
        raise SemrlError(f"{raw / pattern}: no {what} files found (run `dvc repro fetch` or `semrl fetch`)")
    return files


# ---------------------------------------------------------------- splitting and de-duplication


def split_documents(sizes: dict[str, int], dev_frac: float, test_frac: float, seed: int) -> dict[str, str]:
    """Assign whole documents to splits: shuffle with the seed, fill test, then dev, up to their share of
    records; the rest is train. A split with a share > 0 gets at least one document."""
    docs = sorted(sizes)
    random.Random(seed).shuffle(docs)
    total = sum(sizes.values())
    assignment, i = {}, 0
    for split, frac, later in (("test", test_frac, 1 + (dev_frac > 0)), ("dev", dev_frac, 1)):
        target, filled = frac * total, 0
        while i < len(docs) - later and frac > 0 and (filled == 0 or filled + sizes[docs[i]] / 2 <= target):
            assignment[docs[i]] = split
            filled += sizes[docs[i]]
            i += 1
    for doc in docs[i:]:
        assignment[doc] = "train"
    return assignment


def group_documents(records: list[dict], keys: tuple[str, ...]) -> dict[str, str]:
    """Documents that share any text (on any key) form one group, so republished or overlapping texts
    land in the same split instead of leaking across splits. Returns doc -> group (its smallest doc)."""
    parent: dict[str, str] = {}

    def find(d: str) -> str:
        while parent.setdefault(d, d) != d:
            parent[d] = parent[parent[d]]
            d = parent[d]
        return d

    first_doc: dict[tuple[str, str], str] = {}
    for r in records:
        find(r["doc"])
        for k in keys:
            other = first_doc.setdefault((k, r[k]), r["doc"])
            a, b = sorted((find(r["doc"]), find(other)))
            parent[b] = a
    return {d: find(d) for d in parent}


def split_records(records: list[dict], keys: tuple[str, ...], dev_frac: float, test_frac: float,
                  seed: int) -> dict[str, list[dict]]:
    """Split by document group (see group_documents), seeded, sized by records."""
    group = group_documents(records, keys)
    unique = {(group[r["doc"]], *(r[k] for k in keys)) for r in records}  # size by distinct texts
    assignment = split_documents(Counter(g for g, *_ in unique), dev_frac, test_frac, seed)
    by_split = defaultdict(list)
    for r in records:
        by_split[assignment[group[r["doc"]]]].append(r)
    return by_split


def claim_splits(by_split: dict[str, list[dict]], keys: tuple[str, ...], source_of, ledger: Ledger,
                 where) -> dict[str, list[dict]]:
    """Remove exact duplicates within a split and leakage across splits (any key's text in two splits)."""
    owner: dict[tuple[str, str], tuple[str, str]] = {}
    out = {}
    for split in CLAIM_ORDER:
        kept, exact_seen = [], {}
        for r in by_split.get(split, []):
            exact = tuple(r[k] for k in keys)
            clash = next(((k, owner[(k, r[k])]) for k in keys
                          if (k, r[k]) in owner and owner[(k, r[k])][0] != split), None)
            file, line = where(r)
            if clash:
                k, (other_split, other_id) = clash
                ledger.reject(source_of(r), file, line, "leakage",
                              f"{k} also in {other_split} ({other_id}); kept there", " ||| ".join(exact))
                continue
            if exact in exact_seen:
                ledger.reject(source_of(r), file, line, "duplicate", f"same as {exact_seen[exact]}",
                              " ||| ".join(exact))
                continue
            exact_seen[exact] = r["id"]
            kept.append(r)
            for k in keys:
                owner.setdefault((k, r[k]), (split, r["id"]))
        out[split] = kept
    return out


# ---------------------------------------------------------------- MT pairs (Lotsawa + CLDR)


def _pair_problem(bo: str, zh: str, zh_min_han_ratio: float) -> tuple[str, str] | None:
    if not bo or not zh:
        return "empty", f"empty {'Tibetan' if not bo else 'Chinese'} side after normalisation"
    bo_scripts = script_counts(bo)
    if set(bo_scripts) != {"bo"}:
        foreign = {k: v for k, v in bo_scripts.items() if k != "bo"}
        return "mixed_script", f"Tibetan side has non-Tibetan letters {foreign}"
    zh_scripts = script_counts(zh)
    if zh_scripts["bo"]:
        return "mixed_script", f"Chinese side has {zh_scripts['bo']} Tibetan letters"
    if script_share(zh, "zh") < zh_min_han_ratio:
        return "wrong_script", f"Chinese side is {script_share(zh, 'zh'):.0%} Han (< {zh_min_han_ratio:.0%})"
    return None


def clean_pair(ledger: Ledger, where: tuple[str, str, int], bo: str, zh: str, min_han_ratio: float,
               drop_openers: bool) -> tuple[str, str] | None:
    """Normalised (bo, zh), or None once the pair is quarantined with its reason; where = (source, file, line)."""
    bo, zh = normalize_bo(bo), normalize_zh(zh)
    if drop_openers:
        bo = strip_openers(bo)
    problem = _pair_problem(bo, zh, min_han_ratio)
    if problem:
        ledger.reject(*where, problem[0], problem[1], f"{bo} ||| {zh}")
        return None
    return bo, zh


def read_lotsawa(raw: Path, cfg: PrepareMT, ledger: Ledger) -> list[dict]:
    """Line-aligned `<ID>-bo.txt` / `<ID>-zh.txt` pairs; line 1 (the title) is a pair too."""
    source = "lotsawa"
    bo_files = _glob(raw, cfg.pairs_glob, "Lotsawa Tibetan")
    records = []
    zh_expected = set()
    for bo_path in bo_files:
        zh_path = bo_path.with_name(bo_path.name.removesuffix("-bo.txt") + "-zh.txt")
        zh_expected.add(zh_path)
        doc = bo_path.name.removesuffix("-bo.txt")
        bo_lines = decode_lines(_read_bytes(bo_path))
        zh_lines = decode_lines(_read_bytes(zh_path)) if zh_path.is_file() else None
        n = max(len(bo_lines), len(zh_lines or []))
        ledger.take(source, n)
        if zh_lines is None:
            for i in range(n):
                ledger.reject(source, _rel(bo_path, raw), i + 1, "unpaired_file", f"{zh_path.name} is missing",
                              bo_lines[i].text or "")
            continue
        if len(bo_lines) != len(zh_lines):
            for i in range(n):
                ledger.reject(source, _rel(bo_path, raw), i + 1, "misaligned",
                              f"{bo_path.name} has {len(bo_lines)} lines, {zh_path.name} has {len(zh_lines)}",
                              (bo_lines[i].text or "") if i < len(bo_lines) else "")
            continue
        for i, (b, z) in enumerate(zip(bo_lines, zh_lines), 1):
            bad = next((d for d in (b, z) if d.text is None), None)
            if bad:
                path = bo_path if bad is b else zh_path
                ledger.reject(source, _rel(path, raw), i, bad.reason, bad.detail)
                continue
            pair = clean_pair(ledger, (source, _rel(bo_path, raw), i), b.text, z.text, cfg.zh_min_han_ratio,
                              cfg.strip_openers)
            if pair is None:
                continue
            bo, zh = pair
            records.append({"id": f"lotsawa-{doc}-{i:04d}", "zh": zh, "bo": bo, "source": source, "doc": doc,
                            "_file": _rel(bo_path, raw), "_line": i})
    for zh_path in sorted(set(raw.glob(cfg.pairs_glob.replace("-bo.txt", "-zh.txt"))) - zh_expected):
        lines = decode_lines(_read_bytes(zh_path))
        ledger.take(source, len(lines))
        for i, d in enumerate(lines, 1):
            ledger.reject(source, _rel(zh_path, raw), i, "unpaired_file", "no matching -bo.txt", d.text or "")
    return records


def read_cldr(raw: Path, file: str, source: str, doc_of, cfg: PrepareMT, ledger: Ledger) -> list[dict]:
    """bo-zh pairs generated by `fetch` from babel's CLDR data (`key<TAB>bo<TAB>zh`); doc_of(key) names the
    group a pair is split with. Derived data: every record carries `synthetic: true`."""
    path = raw / file
    if not path.is_file():
        raise SemrlError(f"{path}: missing; enable `fetch.cldr` or switch it off in `prepare.mt`")
    records = []
    for i, d in enumerate(decode_lines(_read_bytes(path))[1:], 2):
        ledger.take(source)
        if d.text is None:
            ledger.reject(source, _rel(path, raw), i, d.reason, d.detail)
            continue
        cols = d.text.split("\t")
        if len(cols) != 3:
            ledger.reject(source, _rel(path, raw), i, "malformed", f"expected 3 columns, found {len(cols)}", d.text)
            continue
        key = cols[0]
        pair = clean_pair(ledger, (source, _rel(path, raw), i), cols[1], cols[2], cfg.zh_min_han_ratio,
                          drop_openers=False)  # CLDR strings carry no yig mgo
        if pair is None:
            continue
        bo, zh = pair
        records.append({"id": f"{source}-{key.replace(':', '-')}", "zh": zh, "bo": bo,
                        "source": source, "synthetic": True, "doc": doc_of(key), "_file": _rel(path, raw),
                        "_line": i})
    return records


def _date_group(key: str) -> str:
    """`1950-03-24:full` -> `cldr_dates-03-24`: a month-day combination is split as a whole, so the test
    split holds days of the year (in any year and format) never seen in training."""
    return "cldr_dates-" + key.split(":")[0][5:]


def prepare_mt(raw: Path, cfg: PrepareMT, seed: int, ledger: Ledger, tables: list[TableSource]) -> dict[str, list[dict]]:
    by_split = split_records(read_lotsawa(raw, cfg, ledger), ("zh", "bo"), cfg.dev_frac, cfg.test_frac, seed)
    if cfg.cldr_pairs:  # lexicon entries: training data only
        by_split["train"] += read_cldr(raw, cfg.cldr_file, "cldr", lambda k: f"cldr-{k.split(':')[0]}", cfg, ledger)
    if cfg.cldr_dates:
        dates = read_cldr(raw, cfg.cldr_dates_file, "cldr_dates", _date_group, cfg, ledger)
        for split, records in split_records(dates, ("zh", "bo"), cfg.dev_frac, cfg.test_frac, seed).items():
            by_split[split] += records
    add_tables(by_split, raw, [t for t in tables if t.task == "mt"], cfg, seed, ledger)
    return claim_splits(by_split, ("zh", "bo"), lambda r: r["source"], ledger, lambda r: (r["_file"], r["_line"]))


# ---------------------------------------------------------------- headlines (Nanhai news)

# ID numbers and stray Latin letters before the text ("194 ༄༅། །", "l" glued to the first syllable).
_LEADING_JUNK = re.compile(
    rf"^(?:[\s{BO_OPENERS}]|[{BO_SHADS}]|[0-9A-Za-z\u0f20-\u0f33]{{1,4}}(?=\s)|[A-Za-z](?=[\u0f40-\u0fbc]))+")
_NEWS_LABEL = re.compile(r"གསར་འགྱུར$")
_REGION = re.compile(r"Writing_Modern_News_([A-Z]+)_")


@dataclass
class Headline:
    title: str | None
    body: str
    skipped: list[str]  # leading segments passed over (category labels, ID numbers)
    reason: str | None = None
    detail: str = ""


def extract_headline(text: str, cfg: PrepareHeadline) -> Headline:
    """Title = the first shad-delimited segment that is not a category label; body = the rest.

    Leading ID numbers, stray Latin letters and yig mgo openers are skipped. A segment with no Tibetan
    letters, one ending in གསར་འགྱུར ("... news"), or one of at most `label_max_syllables` syllables
    among the first `max_label_segments` segments is a label, not a headline.
    """
    text = desegment(text)
    skipped = []
    rest = text
    for _ in range(cfg.max_label_segments + 1):
        rest = _LEADING_JUNK.sub("", rest)
        m = re.search(rf"[{BO_SHADS}]+", rest)
        segment, after = (rest[:m.start()], rest[m.end():]) if m else (rest, "")
        segment = segment.strip().rstrip("\u0f0b")
        is_label = (not bo_syllables(segment) or _NEWS_LABEL.search(segment)
                    or len(bo_syllables(segment)) <= cfg.label_max_syllables)
        if not is_label or not after.strip():
            break
        skipped.append(segment)
        rest = after
    else:
        return Headline(None, "", skipped, "title_missing", f"only labels in the first {len(skipped)} segments")
    title, body = segment, _LEADING_JUNK.sub("", after).strip()
    return Headline(title, body, skipped, *(headline_problem(title, body, cfg) or (None, "")))


def headline_problem(title: str, body: str, cfg: PrepareHeadline) -> tuple[str, str] | None:
    """(reason, detail) when a title/body pair is outside the configured bounds, else None."""
    n = len(bo_syllables(title))
    if n < cfg.title_min_syllables:
        return "title_too_short", f"{n} syllables < {cfg.title_min_syllables}"
    if n > cfg.title_max_syllables:
        return "title_too_long", f"{n} syllables > {cfg.title_max_syllables}"
    share = script_share(title, "bo")
    if share < cfg.title_min_tibetan_ratio:
        return "title_not_tibetan", f"{share:.0%} Tibetan letters < {cfg.title_min_tibetan_ratio:.0%}"
    if len(body) < cfg.body_min_chars:
        return "body_too_short", f"{len(body)} chars < {cfg.body_min_chars}"
    if len(body) > cfg.body_max_chars:
        return "body_too_long", f"{len(body)} chars > {cfg.body_max_chars}"
    return None


def lead_overlap(title: str, body: str) -> float:
    """Share of the title's syllables found in the body's first sentence (it inflates ROUGE)."""
    lead = re.split(rf"[{BO_SHADS}]", body, maxsplit=1)[0]
    t, lead_syl = Counter(bo_syllables(title)), Counter(bo_syllables(lead))
    return sum((t & lead_syl).values()) / max(1, sum(t.values()))


def prepare_headlines(raw: Path, cfg: PrepareHeadline, seed: int, ledger: Ledger,
                      tables: list[TableSource]) -> dict[str, list[dict]]:
    source = "nanhai_news"
    records = []
    for path in _glob(raw, cfg.files_glob, "Nanhai news"):
        ledger.take(source)
        rel = _rel(path, raw)
        decoded = decode_utf8(_read_bytes(path))
        if decoded.text is None:
            ledger.reject(source, rel, None, decoded.reason, decoded.detail)
            continue
        ledger.notes["headline_bom_stripped"] += decoded.had_bom
        if not decoded.text.strip():
            ledger.reject(source, rel, 1, "empty_file", "no text")
            continue
        h = extract_headline(decoded.text, cfg)
        if h.reason:
            ledger.reject(source, rel, 1, h.reason, h.detail, h.title or decoded.text)
            continue
        ledger.notes["headline_labels_skipped"] += len(h.skipped)
        region = _REGION.search(path.name)
        records.append({
            "id": "nanhai-" + hashlib.sha1(path.name.encode()).hexdigest()[:12], "title": h.title, "body": h.body,
            "source": source, "region": region.group(1).lower() if region else "unknown", "doc": path.name,
            "_file": rel,
        })
    by_split = split_records(records, ("title", "body"), cfg.dev_frac, cfg.test_frac, seed)
    add_tables(by_split, raw, [t for t in tables if t.task == "headline"], cfg, seed, ledger)
    return claim_splits(by_split, ("title", "body"), lambda r: r["source"], ledger,
                        lambda r: (r["_file"], r.get("_line", 1)))


# ---------------------------------------------------------------- tables (fetch.tables)


def table_records(raw: Path, table: TableSource, cfg: PrepareMT | PrepareHeadline, ledger: Ledger) -> list[dict]:
    """A table's rows as MT pairs or headlines, through the same normalisation and checks as the
    built-in corpora; every row is kept or quarantined with its line."""
    path = raw / table.filename
    if not path.is_file():
        raise SemrlError(f"{path}: missing; run `dvc repro fetch` or `semrl fetch` (fetch.tables {table.name})")
    rel, records = _rel(path, raw), []
    for row in iter_rows(path, str(table.format)):
        ledger.take(table.name)
        fields, why = map_columns(table, row.values) if row.values is not None else (None, row.error)
        if fields is None:
            reason = "malformed" if row.values is None else "missing_field"
            ledger.reject(table.name, rel, row.line, reason, why, json.dumps(row.values, ensure_ascii=False)[:EXCERPT])
            continue
        doc = f"{table.name}-{fields.get('doc', row.line)}"
        where = (table.name, rel, row.line)
        if table.task == "mt":
            pair = clean_pair(ledger, where, fields["bo"], fields["zh"], cfg.zh_min_han_ratio, cfg.strip_openers)
            if pair is None:
                continue
            record = {"zh": pair[1], "bo": pair[0]}
        else:
            title, body = normalize_bo(fields["title"]), normalize_bo(fields["body"])
            problem = headline_problem(title, body, cfg)
            if problem:
                ledger.reject(*where, problem[0], problem[1], title)
                continue
            record = {"title": title, "body": body, "region": table.name}
        records.append({"id": f"{table.name}-{row.line:06d}", **record, "source": table.name, "doc": doc,
                        "_file": rel, "_line": row.line})
    return records


def add_tables(by_split: dict[str, list[dict]], raw: Path, tables: list[TableSource], cfg: PrepareMT | PrepareHeadline, seed: int,
               ledger: Ledger) -> None:
    """Each table goes whole to its split, or (use: split) through its own seeded document split, so
    adding a table never reshuffles the built-in corpora's splits."""
    for table in tables:
        records = table_records(raw, table, cfg, ledger)
        if table.use == "split":
            keys = TASK_FIELDS[table.task]
            for split, part in split_records(records, keys, cfg.dev_frac, cfg.test_frac, seed).items():
                by_split[split] += part
        else:
            by_split[table.use] += records


# ---------------------------------------------------------------- language-model text


def _dedupe_texts(items: Iterable[tuple[str, str, str, int | None]], ledger: Ledger) -> list[tuple[str, str]]:
    """(source, text, file, line) -> kept (source, text); empties and exact repeats are quarantined."""
    seen, kept = {}, []
    for source, text, file, line in items:
        if not text:
            ledger.reject(source, file, line, "empty", "no text after normalisation")
        elif text in seen:
            ledger.reject(source, file, line, "duplicate", f"same as {seen[text]}", text)
        else:
            seen[text] = f"{file}:{line}"
            kept.append((source, text))
    return kept


def lm_zh_items(raw: Path, cfg: PrepareLM, ledger: Ledger):
    """General Chinese: CMRC 2018 *trial* contexts (never dev: that is the benchmark) and xiehouyu."""
    path = raw / cfg.cmrc_trial
    data = _load_json(path)
    for article in _squad_articles(data, path):
        for paragraph in article.get("paragraphs", []):
            ledger.take("cmrc_trial")
            yield "cmrc_trial", normalize_zh(str(paragraph.get("context", ""))), _rel(path, raw), None
    path = raw / cfg.xiehouyu
    data = _load_json(path)
    if not isinstance(data, list):
        raise SemrlError(f"{path}: expected a JSON list of {{riddle, answer}} objects")
    for i, item in enumerate(data):
        ledger.take("xiehouyu")
        riddle = normalize_zh(str(item.get("riddle", ""))) if isinstance(item, dict) else ""
        answer = normalize_zh(str(item.get("answer", ""))) if isinstance(item, dict) else ""
        if not riddle or not answer:
            ledger.reject("xiehouyu", _rel(path, raw), None, "missing_field", f"item {i} lacks riddle or answer",
                          json.dumps(item, ensure_ascii=False))
            continue
        yield "xiehouyu", f"{riddle}{cfg.xiehouyu_separator}{answer}", _rel(path, raw), None


def lm_bo_items(raw: Path, cfg: PrepareLM, ledger: Ledger):
    """Tibetan monolingual text: Nanhai children's literature, de-segmented, one story per line."""
    source = "nanhai_childrens_lit"
    for path in _glob(raw, cfg.bo_glob, "Nanhai children's literature"):
        ledger.take(source)
        decoded = decode_utf8(_read_bytes(path))
        if decoded.text is None:
            ledger.reject(source, _rel(path, raw), None, decoded.reason, decoded.detail)
            continue
        text = desegment(decoded.text)
        if text and script_share(text, "bo") < cfg.bo_min_tibetan_ratio:
            ledger.reject(source, _rel(path, raw), 1, "wrong_script",
                          f"{script_share(text, 'bo'):.0%} Tibetan letters", text)
            continue
        yield source, text, _rel(path, raw), 1


# ---------------------------------------------------------------- general competence (CMRC 2018 dev)


def _squad_articles(data: Any, path: Path) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise SemrlError(f"{path}: expected SQuAD format {{'data': [{{'paragraphs': [...]}}]}}")
    return data["data"]


def prepare_cmrc_dev(raw: Path, cfg: PrepareGeneral, ledger: Ledger) -> list[dict]:
    source, path = "cmrc_dev", raw / cfg.cmrc_dev
    rel = _rel(path, raw)
    records, seen = [], set()
    for article in _squad_articles(_load_json(path), path):
        for paragraph in article.get("paragraphs", []):
            context = strip_invisible(str(paragraph.get("context", "")))[0].strip()
            for qa in paragraph.get("qas", []):
                ledger.take(source)
                qid = str(qa.get("id", ""))
                question = strip_invisible(str(qa.get("question", "")))[0].strip()
                texts = (str(a.get("text", "")).strip() for a in qa.get("answers", []) if isinstance(a, dict))
                answers = list(dict.fromkeys(t for t in texts if t))
                if not qid or qid in seen:
                    ledger.reject(source, rel, None, "duplicate", f"question id {qid!r} missing or repeated", question)
                elif not context or not question:
                    ledger.reject(source, rel, None, "empty", f"{qid}: empty context or question", question)
                elif not answers:
                    ledger.reject(source, rel, None, "no_answer", f"{qid}: no reference answer", question)
                elif not any(a in context for a in answers):
                    ledger.reject(source, rel, None, "answer_not_in_context", f"{qid}: no answer is a span", question)
                else:
                    seen.add(qid)
                    records.append({"id": qid, "context": context, "question": question, "answers": answers})
    return records


# ---------------------------------------------------------------- the stage


def _public(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]


def run(config: Config) -> dict[str, Any]:
    p = config.prepare
    raw, out = p.raw_dir, p.out_dir
    if not raw.is_dir():
        raise SemrlError(f"{raw}: raw data folder missing (run `dvc repro fetch` or `semrl fetch`)")
    seed, ledger = p.seed, Ledger()

    tables = read_tables(config.fetch.tables)
    mt = prepare_mt(raw, p.mt, seed, ledger, tables)
    headline = prepare_headlines(raw, p.headline, seed, ledger, tables)
    lm_zh = _dedupe_texts(lm_zh_items(raw, p.lm, ledger), ledger)
    lm_bo = _dedupe_texts(lm_bo_items(raw, p.lm, ledger), ledger)
    cmrc_dev = prepare_cmrc_dev(raw, p.general, ledger)

    kept = Counter()
    for split in SPLITS:
        write_jsonl(out / "mt" / f"{split}.jsonl", _public(mt[split]))
        write_jsonl(out / "headline" / f"{split}.jsonl", _public(headline[split]))
        kept.update(r["source"] for r in mt[split] + headline[split])
    for name, items in (("zh", lm_zh), ("bo", lm_bo)):
        atomic_write_text(out / "lm" / f"{name}.txt", "".join(text + "\n" for _, text in items))
        kept.update(source for source, _ in items)
    write_jsonl(out / "general" / "cmrc_dev.jsonl", cmrc_dev)
    kept["cmrc_dev"] += len(cmrc_dev)
    write_jsonl(out / "quarantine.jsonl", ledger.quarantine)

    overlaps = [lead_overlap(r["title"], r["body"]) for split in SPLITS for r in headline[split]]
    stats = {
        "outputs": {
            "mt": {s: len(mt[s]) for s in SPLITS},
            "mt_by_source": {s: dict(Counter(r["source"] for r in mt[s])) for s in SPLITS},
            "mt_documents": {s: len({r["doc"] for r in mt[s]}) for s in SPLITS},
            "headline": {s: len(headline[s]) for s in SPLITS},
            "headline_by_region": {s: dict(sorted(Counter(r["region"] for r in headline[s]).items())) for s in SPLITS},
            "lm": {"zh_lines": len(lm_zh), "zh_chars": sum(len(t) for _, t in lm_zh),
                   "bo_lines": len(lm_bo), "bo_chars": sum(len(t) for _, t in lm_bo)},
            "general": {"cmrc_dev": len(cmrc_dev)},
        },
        "sources": ledger.check(kept),
        "quarantine": {
            "total": len(ledger.quarantine),
            "by_reason": dict(sorted(Counter(q["reason"] for q in ledger.quarantine).items())),
            "by_source_reason": {
                s: dict(sorted(Counter(q["reason"] for q in ledger.quarantine if q["source"] == s).items()))
                for s in sorted({q["source"] for q in ledger.quarantine})
            },
        },
        "headline_lead_overlap": {
            "mean": round(sum(overlaps) / max(1, len(overlaps)), 4),
            "share_ge_0.8": round(sum(o >= 0.8 for o in overlaps) / max(1, len(overlaps)), 4),
        },
        "notes": dict(sorted(ledger.notes.items())),
    }
    atomic_write_text(out / "stats.json", json.dumps(stats, ensure_ascii=False, indent=2) + "\n")
    return stats


def summary(stats: dict[str, Any]) -> str:
    o = stats["outputs"]
    return (f"prepare: mt train/dev/test {o['mt']['train']}/{o['mt']['dev']}/{o['mt']['test']}, "
            f"headline {o['headline']['train']}/{o['headline']['dev']}/{o['headline']['test']}, "
            f"lm zh {o['lm']['zh_lines']} lines / bo {o['lm']['bo_lines']} lines, "
            f"cmrc dev {o['general']['cmrc_dev']}, quarantined {stats['quarantine']['total']} "
            f"{stats['quarantine']['by_reason']}")
