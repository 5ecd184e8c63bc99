"""bo-zh pairs derived from the CLDR locale data inside babel: names (languages, scripts, territories,
months, weekdays) and dates written out in each language's long and full CLDR date formats.

Both are *derived* data (labelled `synthetic` in the prepared records): real, reviewed locale strings,
but generated pairs, not translations people wrote. The date pairs give the tiny profile an MT signal a
small model can learn — the month and weekday names must be translated, the numbers carried over, the
word order changed — with combinations held out for testing (see prepare.read_cldr_dates)."""
from __future__ import annotations

import datetime as dt
import random

import babel
from babel import Locale, dates

CATEGORIES = ("languages", "scripts", "territories")
# The dates written out: a fixed, seeded sample of days, pinned by the sha256 in data/sources.tsv.
DATE_RANGE = (dt.date(1950, 1, 1), dt.date(2049, 12, 31))
DATE_COUNT = 2400
DATE_SEED = 20260527
DATE_FORMATS = ("long", "full")  # long: year, month, day; full: + weekday. (medium/short: no month names)


def babel_version() -> str:
    return babel.__version__


def cldr_pairs() -> list[tuple[str, str, str]]:
    """(key, bo, zh) for every CLDR item named in both Tibetan and simplified Chinese, sorted by key."""
    bo, zh = Locale.parse("bo"), Locale.parse("zh_Hans")
    pairs = []
    for category in CATEGORIES:
        bo_names, zh_names = getattr(bo, category), getattr(zh, category)
        pairs += [(f"{category}:{k}", bo_names[k], zh_names[k]) for k in bo_names if k in zh_names]
    for category in ("months", "days"):
        bo_names = getattr(bo, category)["format"]["wide"]
        zh_names = getattr(zh, category)["format"]["wide"]
        pairs += [(f"{category}:{k}", bo_names[k], zh_names[k]) for k in bo_names if k in zh_names]
    return sorted(pairs)


def cldr_dates() -> list[tuple[str, str, str]]:
    """(key, bo, zh) for DATE_COUNT distinct days of DATE_RANGE, each in one of DATE_FORMATS, e.g.
    `2026-11-29:full`, `2026 ཟླ་བ་བཅུ་གཅིག་པའི་ཚེས་29, གཟའ་ཉི་མ་`, `2026年11月29日星期日`; sorted by key."""
    rng = random.Random(DATE_SEED)
    first, last = DATE_RANGE
    days = rng.sample(range((last - first).days + 1), DATE_COUNT)
    rows = []
    for offset in days:
        day, fmt = first + dt.timedelta(days=offset), rng.choice(DATE_FORMATS)
        rows.append((f"{day.isoformat()}:{fmt}", dates.format_date(day, fmt, locale="bo"),
                     dates.format_date(day, fmt, locale="zh_Hans")))
    return sorted(rows)


def _tsv(rows: list[tuple[str, str, str]]) -> bytes:
    lines = ["key\tbo\tzh"] + ["\t".join(r) for r in rows]
    return ("\n".join(lines) + "\n").encode("utf-8")


def cldr_pairs_tsv() -> bytes:
    return _tsv(cldr_pairs())


def cldr_dates_tsv() -> bytes:
    return _tsv(cldr_dates())


# What `fetch` writes for each generated source (data/sources.tsv rows of type cldr), by its path.
GENERATED = {"cldr/bo_zh_pairs.tsv": cldr_pairs_tsv, "cldr/bo_zh_dates.tsv": cldr_dates_tsv}
