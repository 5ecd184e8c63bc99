"""bo-zh name pairs (languages, scripts, territories, months, weekdays) from the CLDR data inside babel."""
from __future__ import annotations

import babel
from babel import Locale

CATEGORIES = ("languages", "scripts", "territories")


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


def cldr_pairs_tsv() -> bytes:
    lines = ["key\tbo\tzh"] + ["\t".join(p) for p in cldr_pairs()]
    return ("\n".join(lines) + "\n").encode("utf-8")
