"""`prepare` on small raw trees cut from the real corpora, then broken on purpose: every kind of bad input
ends as a clear error naming the file (and line) or as a quarantine record with its reason, and
kept + quarantined = input always holds."""
from collections import Counter

import pytest
import yaml

from semrl import SemrlError
from semrl.core.config import Config, PrepareHeadline
from semrl.core.text import normalize_bo
from semrl.data import prepare
from semrl.data.prepare import Ledger, claim_splits, extract_headline, group_documents, split_documents

from conftest import read_jsonl, run_stage


def run(p: dict) -> dict:
    """`prepare` on a params dict (the small fixture's, edited by the test), validated as a stage would."""
    return prepare.run(Config.model_validate(p))


def quarantine(p) -> list[dict]:
    return read_jsonl(__import__("pathlib").Path(p["prepare"]["out_dir"]) / "quarantine.jsonl")


def reasons(p, source=None) -> Counter:
    return Counter(q["reason"] for q in quarantine(p) if source in (None, q["source"]))


def first_pair(raw):
    bo = sorted((raw / "lotsawa" / "text-pairs").glob("*-bo.txt"))[0]
    return bo, bo.with_name(bo.name.replace("-bo.txt", "-zh.txt"))


def test_clean_small_tree_accounts_for_every_record(small):
    raw, p = small
    stats = run(p)
    for source, row in stats["sources"].items():
        assert row["input"] == row["kept"] + row["quarantined"] > 0, source
    assert all(stats["outputs"]["mt"][s] > 0 for s in ("train", "dev", "test"))
    assert stats["outputs"]["mt_by_source"]["train"]["cldr"] == 270


def test_cldr_date_pairs_hold_out_days_of_the_year_and_are_labelled_synthetic(small):
    raw, p = small
    p["prepare"]["mt"].update(cldr_dates=True, dev_frac=0.1, test_frac=0.1)
    stats = run(p)
    out = p["prepare"]["out_dir"]
    rows = {s: [r for r in read_jsonl(__import__("pathlib").Path(out) / "mt" / f"{s}.jsonl")
                if r["source"] == "cldr_dates"] for s in ("train", "dev", "test")}
    assert stats["sources"]["cldr_dates"] == {"input": 2400, "kept": 2400, "quarantined": 0}
    assert sum(map(len, rows.values())) == 2400
    assert 150 < len(rows["test"]) < 330 and 150 < len(rows["dev"]) < 330  # ~10 % each, by whole month-days
    month_days = {s: {r["id"].split("-", 2)[2][:5] for r in rs} for s, rs in rows.items()}  # cldr_dates-YYYY-MM-DD
    assert not month_days["test"] & month_days["train"] and not month_days["dev"] & month_days["train"]
    assert all(r["synthetic"] is True for rs in rows.values() for r in rs)
    r = next(r for r in rows["test"] if r["id"].endswith("-full"))
    assert r["zh"].endswith(("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"))
    assert "གཟའ་" in r["bo"] and r["zh"][:4] in r["bo"]  # weekday named, the year carried over
    lotsawa = [r for r in read_jsonl(__import__("pathlib").Path(out) / "mt" / "train.jsonl") if r["source"] == "lotsawa"]
    assert lotsawa and all("synthetic" not in r for r in lotsawa)


def test_invalid_utf8_line_is_quarantined_with_line_and_offset(small):
    raw, p = small
    bo, _ = first_pair(raw)
    lines = bo.read_bytes().split(b"\n")
    lines[2] = b"\xff" + lines[2]
    bo.write_bytes(b"\n".join(lines))
    stats = run(p)
    [q] = [q for q in quarantine(p) if q["reason"] == "invalid_utf8"]
    assert q["file"] == f"lotsawa/text-pairs/{bo.name}" and q["line"] == 3
    assert f"file byte {len(lines[0]) + len(lines[1]) + 2}" in q["detail"]
    row = stats["sources"]["lotsawa"]
    assert row["input"] == row["kept"] + row["quarantined"]


def test_utf16_files_fail_loudly_as_quarantine_not_garbage(small):
    raw, p = small
    news = sorted((raw / "nanhai" / "news").glob("*.txt"))
    news[0].write_bytes(news[0].read_text(encoding="utf-8").encode("utf-16"))  # with BOM
    news[1].write_bytes(news[1].read_text(encoding="utf-8-sig").encode("utf-16-le"))  # without BOM
    run(p)
    bad = {q["file"]: q for q in quarantine(p) if q["reason"] == "utf16_encoding"}
    assert set(bad) == {f"nanhai/news/{news[0].name}", f"nanhai/news/{news[1].name}"}
    assert "UTF-16" in bad[f"nanhai/news/{news[0].name}"]["detail"]


def test_bom_is_stripped_and_counted(small):
    raw, p = small
    news = sorted((raw / "nanhai" / "news").glob("*.txt"))
    had = sum(f.read_bytes().startswith(b"\xef\xbb\xbf") for f in news)
    target = next(f for f in news if not f.read_bytes().startswith(b"\xef\xbb\xbf"))
    target.write_bytes(b"\xef\xbb\xbf" + target.read_bytes())
    stats = run(p)
    assert stats["notes"]["headline_bom_stripped"] == had + 1
    for split in ("train", "dev", "test"):
        for r in read_jsonl(raw.parent / "prepared" / "headline" / f"{split}.jsonl"):
            assert "\ufeff" not in r["title"] + r["body"]


@pytest.mark.parametrize("name", ["cmrc2018/cmrc2018_dev.json", "cmrc2018/cmrc2018_trial.json",
                                  "xiehouyu/xiehouyu.json"])
def test_truncated_json_is_an_error_with_file_line_and_column(small, name):
    raw, p = small
    path = raw / name
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) * 2 // 3], encoding="utf-8")
    with pytest.raises(SemrlError, match=rf"{path}:\d+:\d+: invalid JSON .*truncated or corrupt"):
        run(p)


def test_misaligned_parallel_files_quarantine_every_line(small):
    raw, p = small
    bo, zh = first_pair(raw)
    zh_lines = zh.read_text(encoding="utf-8").split("\n")
    zh.write_text("\n".join(zh_lines[:-2]), encoding="utf-8")
    stats = run(p)
    bad = [q for q in quarantine(p) if q["reason"] == "misaligned"]
    n_bo = len(bo.read_bytes().rstrip(b"\n").split(b"\n"))
    assert len(bad) == n_bo and all(q["file"].endswith(bo.name) for q in bad)
    assert "lines" in bad[0]["detail"]
    assert stats["sources"]["lotsawa"]["quarantined"] >= n_bo


def test_unpaired_file_is_quarantined(small):
    raw, p = small
    _, zh = first_pair(raw)
    n = len(zh.read_bytes().rstrip(b"\n").split(b"\n"))
    zh.unlink()
    run(p)
    assert reasons(p)["unpaired_file"] == n


def test_mixed_script_lines_are_quarantined(small):
    raw, p = small
    bo, zh = first_pair(raw)
    b, z = bo.read_text(encoding="utf-8").split("\n"), zh.read_text(encoding="utf-8").split("\n")
    b[1] = b[1] + " 祈请"          # Han inside the Tibetan side
    z[2] = z[2] + "བོད་སྐད"        # Tibetan inside the Chinese side
    z[3] = "Homage to the guru"   # no Han at all
    bo.write_text("\n".join(b), encoding="utf-8")
    zh.write_text("\n".join(z), encoding="utf-8")
    run(p)
    got = {(q["line"], q["reason"]) for q in quarantine(p) if q["file"].endswith(bo.name)}
    assert {(2, "mixed_script"), (3, "mixed_script"), (4, "wrong_script")} <= got


def test_zero_width_and_control_characters_are_removed_or_quarantined(small):
    raw, p = small
    bo, zh = first_pair(raw)
    b = bo.read_text(encoding="utf-8").split("\n")
    clean_second = b[1]
    b[1] = "\u200b".join(b[1]) + "\x07"
    b[2] = "\u200b\u200d\x01"
    bo.write_text("\n".join(b), encoding="utf-8")
    run(p)
    records = [r for s in ("train", "dev", "test") for r in read_jsonl(raw.parent / "prepared" / "mt" / f"{s}.jsonl")]
    line2 = next(r for r in records if r["id"] == f"lotsawa-{bo.name[:-7]}-0002")
    assert line2["bo"] == normalize_bo(clean_second)
    assert {(q["line"], q["reason"]) for q in quarantine(p) if q["file"].endswith(bo.name)} >= {(3, "empty")}


def test_duplicates_are_quarantined_once_kept_once(small):
    raw, p = small
    news = sorted((raw / "nanhai" / "news").glob("*.txt"))
    (news[0].parent / ("copy_" + news[0].name)).write_bytes(news[0].read_bytes())
    stats = run(p)
    assert reasons(p, "nanhai_news")["duplicate"] == 1
    assert stats["sources"]["nanhai_news"]["input"] == 13


def test_texts_shared_by_documents_never_straddle_splits():
    records = [{"id": f"{d}-{i}", "doc": d, "zh": z, "bo": b} for d, i, z, b in [
        ("A", 1, "一", "ཀ"), ("A", 2, "二", "ཁ"), ("B", 1, "三", "ག"), ("C", 1, "二", "ང"), ("D", 1, "四", "ཅ")]]
    group = group_documents(records, ("zh", "bo"))
    assert group["A"] == group["C"] != group["B"]
    for seed in range(20):
        assignment = split_documents({"A": 3, "B": 1, "D": 1}, 0.3, 0.3, seed)
        assert set(assignment.values()) == {"train", "dev", "test"}


def test_leakage_across_splits_is_quarantined_from_train():
    ledger = Ledger()
    by_split = {
        "test": [{"id": "t1", "zh": "你好", "bo": "བཀྲ་ཤིས"}],
        "train": [{"id": "r1", "zh": "你好", "bo": "ཡག་པོ"}, {"id": "r2", "zh": "再见", "bo": "ཡག་པོ"},
                  {"id": "r3", "zh": "再见", "bo": "ཡག་པོ"}],
    }
    out = claim_splits(by_split, ("zh", "bo"), lambda r: "x", ledger, lambda r: ("f", 1))
    assert [r["id"] for r in out["test"]] == ["t1"] and [r["id"] for r in out["train"]] == ["r2"]
    assert [q["reason"] for q in ledger.quarantine] == ["leakage", "duplicate"]
    assert "zh also in test (t1)" in ledger.quarantine[0]["detail"]


def test_cldr_pair_equal_to_a_test_pair_is_leakage(small):
    raw, p = small
    run(p)
    test = read_jsonl(raw.parent / "prepared" / "mt" / "test.jsonl")
    with open(raw / "cldr" / "bo_zh_pairs.tsv", "a", encoding="utf-8") as f:
        f.write(f"fake:1\t{test[0]['bo']}\t{test[0]['zh']}\n")
    stats = run(p)
    assert reasons(p, "cldr") == {"leakage": 1}
    assert stats["sources"]["cldr"] == {"input": 271, "kept": 270, "quarantined": 1}


def test_empty_files(small):
    raw, p = small
    news = sorted((raw / "nanhai" / "news").glob("*.txt"))
    news[0].write_bytes(b"")
    bo, zh = first_pair(raw)
    bo.write_bytes(b"")
    zh.write_bytes(b"")
    run(p)
    assert reasons(p, "nanhai_news")["empty_file"] == 1
    (raw / "cmrc2018" / "cmrc2018_dev.json").write_bytes(b"")
    with pytest.raises(SemrlError, match="cmrc2018_dev.json: empty file"):
        run(p)


def test_missing_raw_data_is_a_clear_error(small, tmp_path):
    raw, p = small
    p["prepare"]["raw_dir"] = str(tmp_path / "nowhere")
    with pytest.raises(SemrlError, match="raw data folder missing"):
        run(p)


def test_accounting_mismatch_fails_the_stage():
    ledger = Ledger()
    ledger.take("lotsawa", 3)
    ledger.reject("lotsawa", "f", 1, "empty")
    with pytest.raises(SemrlError, match="lotsawa: input 3 != kept 1 \\+ quarantined 1"):
        ledger.check(Counter({"lotsawa": 1}))


HEADLINE_CFG = PrepareHeadline(body_min_chars=20)


def test_headline_skips_labels_ids_and_openers_on_real_openings():
    # Openings of real Nanhai news files: a "news" category label, an ID number and a yig mgo opener.
    text = ("དཔལ་འབྱོར་གསར་འགྱུར ། 194 ༄༅། ། བོད་ལྗོངས ཀྱིས ཁོར་ཡུག སྲུང་སྐྱོང ལམ་བུ བསྐྲུན ནས ཇོ་མོ་གླང་མ-འི "
            "ཡུལ་སྐོར ཐད ལ རོགས་འདེགས བྱས ། རྒྱལ་གཞུང ཨང་རྟགས ༣༡༨ ནས བོད་ལྗོངས དིང་རི་རྫོང ཆོས་རྫོང སྡེ་བ-འི གྲོང་སྡེ-འི ")
    h = extract_headline(text, HEADLINE_CFG)
    assert h.reason is None
    assert h.title == "བོད་ལྗོངས་ཀྱིས་ཁོར་ཡུག་སྲུང་སྐྱོང་ལམ་བུ་བསྐྲུན་ནས་ཇོ་མོ་གླང་མའི་ཡུལ་སྐོར་ཐད་ལ་རོགས་འདེགས་བྱས"
    assert h.body.startswith("རྒྱལ་གཞུང་ཨང་རྟགས") and h.skipped == ["དཔལ་འབྱོར་གསར་འགྱུར"]
    short = extract_headline("ལོ་རྒྱུས ། ཀ་ཁ ། ག་ང ། ཅ་ཆ ། " + "ཇ་ཉ " * 20, HEADLINE_CFG)
    assert short.reason == "title_missing"
    url = extract_headline("\ufeffhttp://www.amdotibet.cn/html/dt/zh/201508/18481.html གསེར་ཆེན་རྫོང གི རྒྱན་གོས ཆེད་ཚོགས "
                           "མཇུག་སྒྲིལ་བ ། " + "སྤྱི་ཟླ བ-འི ཚེས ཉིན " * 5, HEADLINE_CFG)
    assert url.title == "གསེར་ཆེན་རྫོང་གི་རྒྱན་གོས་ཆེད་ཚོགས་མཇུག་སྒྲིལ་བ"


def test_prepare_cli_error_has_no_traceback(small, tmp_path):
    raw, p = small
    (raw / "cmrc2018" / "cmrc2018_dev.json").write_text('{"data": [', encoding="utf-8")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p), encoding="utf-8")
    proc = run_stage("prepare", tmp_path / "params.yaml")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: {raw}/cmrc2018/cmrc2018_dev.json:1:11: invalid JSON" in proc.stderr
