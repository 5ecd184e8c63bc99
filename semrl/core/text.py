"""Text rules for Tibetan and Chinese: decoding, normalisation, de-segmentation, script detection."""
from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

TSHEG = "\u0f0b"
SHAD = "\u0f0d"
NGA = "\u0f44"
# A "Tibetan letter" is any code point that builds a syllable: consonants, vowel signs, subjoined letters.
BO_LETTER = "\u0f40-\u0fbc"
BO_DIGIT = "\u0f20-\u0f33"
BO_SHADS = "\u0f0d-\u0f12"
BO_OPENERS = "\u0f01-\u0f0a"  # yig mgo head marks such as ༄༅; not letters
HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))

_WS = re.compile(r"\s+")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)


# ---------------------------------------------------------------- decoding


@dataclass
class Decoded:
    text: str | None
    reason: str | None = None  # quarantine reason when text is None
    detail: str = ""
    had_bom: bool = False


def _looks_utf16(data: bytes) -> bool:
    """UTF-16 text of one script has the same few high bytes (0x00, 0x0F for Tibetan) at every other
    position; UTF-8 never does."""
    if len(data) < 64:  # too short to tell; NUL and control checks still apply
        return False
    for high in (data[1::2], data[0::2]):
        top = sum(n for _, n in Counter(high).most_common(3))
        if top >= 0.9 * len(high):
            return True
    return False


def decode_utf8(data: bytes) -> Decoded:
    """Strict UTF-8 with the BOM stripped; UTF-16 and invalid bytes are reported, never guessed around."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return Decoded(None, "utf16_encoding", "starts with a UTF-16 byte-order mark; expected UTF-8")
    had_bom = data.startswith(b"\xef\xbb\xbf")
    if had_bom:
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if _looks_utf16(data):
            return Decoded(None, "utf16_encoding", "every other byte alike: looks like UTF-16 without a BOM")
        return Decoded(None, "invalid_utf8", f"invalid UTF-8 at byte {e.start + 3 * had_bom}: {e.reason}")
    controls = sum(ch < " " and ch not in "\t\n\r" for ch in text)
    if "\x00" in text or controls > len(text) // 5 or _looks_utf16(data):
        # UTF-16 without a BOM decodes "validly": Tibetan U+0Fxx becomes one ASCII byte plus \x0f.
        return Decoded(None, "utf16_encoding", "NUL or control bytes throughout: looks like UTF-16 without a BOM")
    return Decoded(text, had_bom=had_bom)


def decode_lines(data: bytes) -> list[Decoded]:
    """Decode a line-oriented file line by line, so one bad line is located instead of failing the file."""
    whole = decode_utf8(data)
    if whole.reason == "utf16_encoding":
        n = max(1, data.count(b"\n") + (0 if data.endswith(b"\n") else 1))
        return [whole] * n
    offset = 0
    if data.startswith(b"\xef\xbb\xbf"):
        data, offset = data[3:], 3
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    out = []
    for raw in raw_lines:
        try:
            out.append(Decoded(raw.rstrip(b"\r").decode("utf-8")))
        except UnicodeDecodeError as e:
            out.append(Decoded(None, "invalid_utf8", f"invalid UTF-8 at file byte {offset + e.start}: {e.reason}"))
        offset += len(raw) + 1
    return out


# ---------------------------------------------------------------- normalisation


def strip_invisible(text: str) -> tuple[str, int]:
    """Drop zero-width, format and control characters (tabs and newlines become spaces); count drops."""
    kept, dropped = [], 0
    for ch in text:
        if ch in "\t\n\r\v\f":
            kept.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs"):
            dropped += 1
        else:
            kept.append(ch)
    return "".join(kept), dropped


def normalize_bo(text: str) -> str:
    """Canonical Tibetan: NFC, no invisibles, one space max, no space before a tsheg, no doubled tsheg,
    tsheg before a shad only after ང (the orthographic rule), the non-breaking tsheg made a tsheg."""
    text = unicodedata.normalize("NFC", text)
    text, _ = strip_invisible(text)
    text = text.replace("\u0f0c", TSHEG)
    text = _WS.sub(" ", text)
    text = re.sub(rf" +{TSHEG}", TSHEG, text)
    text = re.sub(rf"{TSHEG}{{2,}}", TSHEG, text)
    text = re.sub(rf"(?<!{NGA}){TSHEG}(?=[{BO_SHADS}])", "", text)
    text = re.sub(rf"{NGA}(?=[{BO_SHADS}])", NGA + TSHEG, text)
    return text.strip()


@functools.lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def normalize_zh(text: str) -> str:
    """Simplified Chinese (OpenCC t2s), NFC, no invisibles, collapsed whitespace. No NFKC: it would turn
    full-width Chinese punctuation into ASCII."""
    text = unicodedata.normalize("NFC", text)
    text, _ = strip_invisible(text)
    text = _WS.sub(" ", text).strip()
    return _t2s().convert(text)


def strip_openers(text: str) -> str:
    """Remove a leading yig mgo opener such as `༄༅། །` (decoration, not content)."""
    return re.sub(rf"^[{BO_OPENERS}]+[{BO_SHADS}\s]*", "", text).strip()


# ---------------------------------------------------------------- de-segmentation (Nanhai)

# Particles that never stand alone as words: joined to the syllable before them without a tsheg.
_BOUND_PARTICLES = "འི|འང|འམ|འོ"
# ས and ར are also words; they are joined only after an open syllable (one stack, optional vowel), the
# only place the agentive/locative particle takes that short form.
_OPEN_SYLLABLE = r"[\u0f40-\u0f6c][\u0f8d-\u0fbc]*[\u0f71-\u0f84]*"
_AFTER = rf"(?=[\s{TSHEG}{BO_SHADS}]|$)"


def desegment(text: str) -> str:
    """Undo Nanhai word segmentation: remove URLs, drop `-` particle joins, attach each shad to the word
    before it, join stand-alone particles, turn a space between two Tibetan letters into a tsheg and
    rejoin split digit runs."""
    text = _URL.sub(" ", text)
    text = normalize_bo(text)
    text = re.sub(rf"(?<=[{BO_LETTER}])-(?=[{BO_LETTER}])", "", text)
    text = re.sub(rf"\s+(?=[{BO_SHADS}])", "", text)
    text = re.sub(rf"(?<=[{BO_LETTER}]) (?:{_BOUND_PARTICLES}){_AFTER}", lambda m: m.group(0)[1:], text)
    text = re.sub(rf"(^|[\s{TSHEG}])({_OPEN_SYLLABLE}) ([སར]){_AFTER}", r"\1\2\3", text)
    text = re.sub(rf"(?<=[{BO_LETTER}]) (?=[{BO_LETTER}])", TSHEG, text)
    # Segmentation also split numbers ("ཚེས1 4ཉིན" is the 14th day): rejoin digit runs of one system.
    text = re.sub(r"(?<=[0-9]) (?=[0-9])", "", text)
    text = re.sub(rf"(?<=[{BO_DIGIT}]) (?=[{BO_DIGIT}])", "", text)
    return normalize_bo(text)


# ---------------------------------------------------------------- scripts


def _is_han(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in HAN_RANGES)


def letter_script(ch: str) -> str | None:
    """Script of a letter-like character ('bo', 'zh', 'latin', 'other'); None for digits, punctuation,
    symbols and whitespace, which every script may use."""
    cp = ord(ch)
    if _is_han(cp) or ch in "々〇":
        return "zh"
    cat = unicodedata.category(ch)
    if cat[0] not in "LM":
        return None
    if 0x0F00 <= cp <= 0x0FFF:
        return "bo"
    if ch.isascii() or "LATIN" in unicodedata.name(ch, ""):
        return "latin"
    return "other"


def script_counts(text: str) -> Counter:
    return Counter(s for s in map(letter_script, text) if s)


def script_share(text: str, script: str) -> float:
    counts = script_counts(text)
    total = sum(counts.values())
    return counts[script] / total if total else 0.0


def in_script(text: str, script: str) -> bool:
    """The language-consistency rule: at least one letter, and every letter in the target script.
    Digits, punctuation, symbols and whitespace of any script are allowed."""
    counts = script_counts(text)
    return bool(counts) and set(counts) == {script}


def bo_syllables(text: str) -> list[str]:
    """Tibetan syllables: runs of Tibetan letters between tshegs, shads, spaces or other characters."""
    return re.findall(rf"[{BO_LETTER}]+", text)


def metric_tokens(text: str, lang: str) -> str:
    """Space-joined tokens for BLEU/ROUGE: Tibetan syllables (tsheg, shad and openers drop out) or single
    Han characters; Latin words and numbers stay whole; any other symbol is a token of its own."""
    if lang not in ("bo", "zh"):
        raise ValueError(f"metric tokenisation for {lang!r}: expected 'bo' or 'zh'")
    han = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    unit = rf"[{BO_LETTER}\u0f00]+" if lang == "bo" else rf"[{han}]"
    tokens = re.findall(rf"{unit}|[^\W_{han}{BO_LETTER}]+|[^\w\s\u0f01-\u0f14]", text)
    return " ".join(tokens)
