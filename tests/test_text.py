"""Unit tests of Tibetan/Chinese text rules on real lines from the corpora."""
import pytest

from semrl.core.text import (
    decode_lines,
    decode_utf8,
    desegment,
    in_script,
    normalize_bo,
    normalize_zh,
    script_counts,
    strip_openers,
)

# The opening of Writing_Modern_News_LHASA_གསར་འགྱུར།_ཁོར་ཡུག_01.txt (Nanhai, word-segmented).
NEWS = "བོད་ལྗོངས ཀྱིས ཁོར་ཡུག སྲུང་སྐྱོང ལམ་བུ བསྐྲུན ནས ཇོ་མོ་གླང་མ-འི ཡུལ་སྐོར ཐད ལ རོགས་འདེགས བྱས །"
# The opening of Writing_Modern_Children'sLit_001.txt: particles stand alone, without `-`.
CHILDREN = "\ufeffརྒོད་མ འི བུ ལྕགས་ཐར་རྒྱལ ། གནའ་སྔ་མོ ཞིག ལ ། རྒོད་མ ཞིག གིས བུ ཞིག བཙས་པ ས །"


def test_desegment_restores_orthography_on_real_news():
    assert desegment(NEWS) == "བོད་ལྗོངས་ཀྱིས་ཁོར་ཡུག་སྲུང་སྐྱོང་ལམ་བུ་བསྐྲུན་ནས་ཇོ་མོ་གླང་མའི་ཡུལ་སྐོར་ཐད་ལ་རོགས་འདེགས་བྱས།"


def test_desegment_joins_standalone_particles_and_strips_bom():
    assert desegment(CHILDREN) == "རྒོད་མའི་བུ་ལྕགས་ཐར་རྒྱལ། གནའ་སྔ་མོ་ཞིག་ལ། རྒོད་མ་ཞིག་གིས་བུ་ཞིག་བཙས་པས།"


def test_desegment_removes_urls_stray_spaces_and_rejoins_numbers():
    text = "http://www.amdotibet.cn/html/dt/whjy/201605/18978.html མང་རྫོང གིས བོད ་ཀྱི ཚེས1 4ཉིན ཤིང  །"
    assert desegment(text) == "མང་རྫོང་གིས་བོད་ཀྱི་ཚེས14ཉིན་ཤིང་།"


@pytest.mark.parametrize("raw, expected", [
    ("བཀྲ་ཤིས\u200b་བདེ་ལེགས།", "བཀྲ་ཤིས་བདེ་ལེགས།"),        # zero-width space
    ("བཀྲ་ཤིས\x07་བདེ་ལེགས།", "བཀྲ་ཤིས་བདེ་ལེགས།"),          # control character
    ("བཀྲ་ཤིས་་བདེ་ལེགས་།", "བཀྲ་ཤིས་བདེ་ལེགས།"),            # doubled tsheg, tsheg before shad
    ("དང།", "དང་།"),                                      # ང keeps a tsheg before the shad
    ("བོད ་ཀྱི  སྐད།", "བོད་ཀྱི སྐད།"),                     # space before tsheg, doubled space
    ("བཀྲ་ཤིས\u0f0cབདེ་ལེགས།", "བཀྲ་ཤིས་བདེ་ལེགས།"),          # non-breaking tsheg
    ("\u0f40\u0f73", "\u0f40\u0f71\u0f72"),               # NFC decomposes the discouraged U+0F73
])
def test_normalize_bo(raw, expected):
    assert normalize_bo(raw) == expected


def test_strip_openers_on_real_lotsawa_title():
    line = "༄༅། །ཀློང་ཆེན་པའི་གསོལ་འདེབས་མི་ཕམ་རིན་པོ་ཆེའི་གསུང་ཁ་བསྒྱུར་བ།"
    assert strip_openers(line) == "ཀློང་ཆེན་པའི་གསོལ་འདེབས་མི་ཕམ་རིན་པོ་ཆེའི་གསུང་ཁ་བསྒྱུར་བ།"


def test_normalize_zh_converts_traditional_and_keeps_fullwidth_punctuation():
    # Line 1 of Lotsawa A02DCD21C-zh.txt (traditional characters).
    assert normalize_zh("祈禱無垢光尊者（改編自米龐仁波切之法語）\u200b ") == "祈祷无垢光尊者（改编自米庞仁波切之法语）"


@pytest.mark.parametrize("text, script, expected", [
    ("གདོད་ནས་ལྷུན་གྲུབ་འོད་གསལ་རིག་པའི་གཤིས། །", "bo", True),
    ("ཐུབ༵་བསྟན༵་ཕྲིན༵་ལས།", "bo", True),                   # ༵ is a Tibetan mark, not foreign
    ("སྤྱི་ཟླ ༡༢ ཚེས 23 ཉིན། (BBC)", "bo", False),          # Latin letters: mixed
    ("༢༠༡༥ ། 2015", "bo", False),                          # no letters at all
    ("", "bo", False),
    ("本初原始明覺之自然本智", "zh", True),
    ("光荣和ω-force开发", "zh", False),
    ("藏语 བོད་སྐད", "zh", False),
])
def test_in_script(text, script, expected):
    assert in_script(text, script) is expected


def test_script_counts_separates_scripts():
    assert script_counts("藏语 བོད་སྐད abc 12。") == {"zh": 2, "bo": 6, "latin": 3}


def test_decode_reports_utf16_bom_and_invalid_bytes():
    assert decode_utf8("བོད".encode("utf-16")).reason == "utf16_encoding"
    assert decode_utf8("བོད".encode("utf-16-le")).reason == "utf16_encoding"
    d = decode_utf8(b"\xef\xbb\xbf" + "བོད".encode())
    assert (d.text, d.had_bom) == ("བོད", True)
    lines = decode_lines("ཀ\n".encode() + b"\xff\xfe\n" + "ཁ".encode())
    assert [x.text for x in lines] == ["ཀ", None, "ཁ"]
    assert lines[1].reason == "invalid_utf8" and "file byte 4" in lines[1].detail
