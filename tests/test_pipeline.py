"""`dvc repro` of fetch + prepare in a fresh copy of the repo, against the real corpora: outputs, invariants."""
import json
from collections import Counter

import yaml

from semrl.core.io import sha256_file
from semrl.core.text import in_script, normalize_zh, script_share

from conftest import REPO, read_jsonl, run

SPLITS = ("train", "dev", "test")


def load(repo, task):
    return {s: read_jsonl(repo / "data" / "prepared" / task / f"{s}.jsonl") for s in SPLITS}


def test_outputs_exist_and_stats_account_for_every_source(repo_copy):
    stats = json.loads((repo_copy / "data" / "prepared" / "stats.json").read_text())
    assert set(stats["sources"]) == {"lotsawa", "cldr", "cldr_dates", "nanhai_news", "nanhai_childrens_lit",
                                     "cmrc_trial", "xiehouyu", "cmrc_dev"}
    for source, row in stats["sources"].items():
        assert row["input"] == row["kept"] + row["quarantined"], source
    # Known sizes of the pinned corpora (corpora.md): 78 Lotsawa texts with 2,495 newline-terminated line pairs
    # (+78 last lines without a newline), 1,001 news files, 348 stories, CMRC dev 3,219 questions.
    assert stats["sources"]["lotsawa"]["input"] == 2573
    assert stats["sources"]["nanhai_news"]["input"] == 1001
    assert stats["sources"]["nanhai_childrens_lit"]["input"] == 348
    assert stats["sources"]["cmrc_dev"]["kept"] == 3219
    assert stats["sources"]["xiehouyu"]["input"] == 14032 and stats["sources"]["cmrc_trial"]["input"] == 256
    assert stats["sources"]["cldr_dates"]["input"] == 2400  # synthetic: 2,400 days of 1950-2049
    quarantined = read_jsonl(repo_copy / "data" / "prepared" / "quarantine.jsonl")
    assert len(quarantined) == stats["quarantine"]["total"] == sum(r["quarantined"] for r in stats["sources"].values())
    assert all(q["reason"] and q["file"] for q in quarantined)


def test_mt_splits_are_clean_normalised_and_disjoint(repo_copy):
    mt = load(repo_copy, "mt")
    assert all(len(mt[s]) > 50 for s in SPLITS)
    docs = {s: {r["doc"] for r in mt[s]} for s in SPLITS}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not docs[a] & docs[b], "a document straddles splits"
        for side in ("zh", "bo"):
            assert not {r[side] for r in mt[a]} & {r[side] for r in mt[b]}, f"{side} text leaks {a}/{b}"
    for s in SPLITS:
        assert len({(r["zh"], r["bo"]) for r in mt[s]}) == len(mt[s])
        for r in mt[s]:
            # derived (CLDR) pairs say so in the record; real ones carry no flag
            synthetic = r["source"] != "lotsawa"
            assert set(r) == {"id", "zh", "bo", "source", "doc"} | ({"synthetic"} if synthetic else set())
            assert r.get("synthetic", False) is synthetic
            assert in_script(r["bo"], "bo") and not r["bo"].startswith("༄")
            assert normalize_zh(r["zh"]) == r["zh"] and script_share(r["zh"], "zh") >= 0.5
    # CLDR names train only; CLDR dates (synthetic, on in the tiny profile) in every split, by month-day
    assert {r["source"] for r in mt["train"]} == {"lotsawa", "cldr", "cldr_dates"}
    assert {r["source"] for s in ("dev", "test") for r in mt[s]} == {"lotsawa", "cldr_dates"}


def test_headlines_are_desegmented_tibetan_and_disjoint(repo_copy):
    hl = load(repo_copy, "headline")
    assert all(len(hl[s]) > 50 for s in SPLITS)
    for s in SPLITS:
        for r in hl[s]:
            assert {"id", "title", "body", "source", "region"} <= set(r)
            assert r["region"] in {"amdo", "kham", "lhasa", "central"}
            text = r["title"] + r["body"]
            assert "-" not in r["title"] and "http" not in text and "\ufeff" not in text
            assert " །" not in text, "a shad left detached"
            assert script_share(r["title"], "bo") >= 0.9 and 200 <= len(r["body"]) <= 20000
    for a, b in (("train", "test"), ("dev", "test"), ("train", "dev")):
        assert not {r["title"] for r in hl[a]} & {r["title"] for r in hl[b]}


def test_lm_and_general_outputs(repo_copy):
    prepared = repo_copy / "data" / "prepared"
    zh = (prepared / "lm" / "zh.txt").read_text(encoding="utf-8").splitlines()
    bo = (prepared / "lm" / "bo.txt").read_text(encoding="utf-8").splitlines()
    assert len(zh) == len(set(zh)) > 10000 and any("——" in line for line in zh)
    assert len(bo) == 348 and all(script_share(line, "bo") > 0.9 for line in bo)
    cmrc = read_jsonl(prepared / "general" / "cmrc_dev.jsonl")
    assert len({r["id"] for r in cmrc}) == len(cmrc)
    assert all(r["answers"] and any(a in r["context"] for a in r["answers"]) for r in cmrc)
    dev_contexts = {r["context"] for r in cmrc}
    assert not dev_contexts & set(zh), "the benchmark leaked into the LM text"


def test_repro_is_a_noop_then_deterministic(repo_copy):
    out = run(["dvc", "repro", "prepare"], repo_copy).stdout
    assert "didn't change, skipping" in out and "Running stage" not in out
    assert run(["dvc", "status", "prepare"], repo_copy).stdout.strip() == "Data and pipelines are up to date."
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())
    before = {o["path"]: o["md5"] for o in lock["stages"]["prepare"]["outs"]}
    run(["dvc", "repro", "--force", "--single-item", "prepare"], repo_copy)
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())
    assert {o["path"]: o["md5"] for o in lock["stages"]["prepare"]["outs"]} == before
    assert Counter(p.suffix for p in (repo_copy / "data" / "raw").rglob("*.part")) == Counter()


def test_fetched_files_match_the_source_list(repo_copy):
    rows = (REPO / "data" / "sources.tsv").read_text(encoding="utf-8").splitlines()[1:]
    for row in rows[::97]:
        name, *_, sha, _bytes, _licence = row.split("\t")
        assert sha256_file(repo_copy / "data" / "raw" / name) == sha


def test_cli_help_lists_the_steps():
    out = run(["semrl", "--help"], REPO).stdout
    for command in ("fetch", "prepare", "sources", "where"):
        assert command in out
