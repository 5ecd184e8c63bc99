"""`fetch.tables`: a user's TSV/JSONL/Parquet over a real local HTTP server and Hugging Face datasets from
a local dataset folder or the mirror's snapshot (HF_HUB_OFFLINE is set: the hub is never contacted), then
`prepare` folding them into the MT and headline data with every row kept or quarantined."""
import copy
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import permutations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semrl import SemrlError
from semrl.core.config import Config, FetchConfig
from semrl.data import prepare
from semrl.data.fetch import FetchError, FetchResult, fetch_tables
from semrl.data.tables import read_tables


def run(p: dict) -> dict:
    return prepare.run(Config.model_validate(p))

from conftest import read_jsonl

FILES: dict[str, bytes] = {}
SYLLABLES = ["བོད", "ལྗོངས", "ཀྱིས", "ཁོར", "ཡུག", "སྲུང", "སྐྱོང", "ལམ", "བུ", "བསྐྲུན"]
SENTENCE = "ས་གནས་ཀྱི་འགོ་ཁྲིད་ཚོས་གྲོང་གསེབ་ཀྱི་སློབ་གྲྭ་ཁག་ལ་ཞིབ་བཤེར་བྱས་པ་རེད། "


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = FILES.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def serve(path: str, body: bytes) -> str:
    FILES[path] = body
    return hashlib.sha256(body).hexdigest()


def headlines(n: int, offset: int = 0) -> list[dict]:
    """n distinct, valid synthetic articles: a 5-syllable title and a body that repeats a real sentence."""
    titles = ["་".join(p) for p in permutations(SYLLABLES, 5)][offset:offset + n]
    return [{"headline": t, "content": SENTENCE * 6 + t + "།", "article": f"a{i // 2}"} for i, t in enumerate(titles)]


def with_tables(p: dict, *tables: dict) -> dict:
    p = copy.deepcopy(p)
    p["fetch"]["tables"] = list(tables)
    return p


def fetch_into(raw, p, mirror=None) -> FetchResult:
    result = FetchResult()
    fetch_tables(read_tables(p["fetch"]["tables"]), FetchConfig(dest=raw, mirror=mirror, retries=0, timeout_s=5),
                 result)
    return result


def quarantined(p, source) -> dict[int, str]:
    rows = read_jsonl(__import__("pathlib").Path(p["prepare"]["out_dir"]) / "quarantine.jsonl")
    return {q["line"]: q["reason"] for q in rows if q["source"] == source}


def test_tsv_over_http_joins_mt_training_with_every_row_accounted(small, server):
    raw, p = small
    run(p)
    out = raw.parent / "prepared" / "mt"
    before = {s: (out / f"{s}.jsonl").read_bytes() for s in ("dev", "test")}
    leaked = read_jsonl(out / "test.jsonl")[0]
    rows = [
        "tibetan\tchinese\tnote",
        "བཀྲ་ཤིས་བདེ་ལེགས།\t吉祥如意\tgood",                        # line 2
        "ཐུགས་རྗེ་ཆེ།\t非常感谢\tgood",                             # 3
        "only two\tcolumns",                                        # 4: malformed
        "ལེགས་སོ།\t\tempty chinese",                                 # 5: missing_field
        "ཁྱེད་རང་中文\t你好\tmixed",                                  # 6: mixed_script
        f"{leaked['bo']}\t{leaked['zh']}\tin the test split",       # 7: leakage
        "བཀྲ་ཤིས་བདེ་ལེགས།\t吉祥如意\tagain",                         # 8: duplicate
    ]
    sha = serve("/pairs.tsv", ("\n".join(rows) + "\n").encode())
    table = {"name": "my_pairs", "type": "file", "url": f"{server}/pairs.tsv", "sha256": sha, "task": "mt",
             "columns": {"bo": "tibetan", "zh": "chinese"}, "use": "train", "licence": "CC0-1.0"}
    p = with_tables(p, table)
    assert fetch_into(raw, p).fetched == 1
    provenance = json.loads((raw / "tables" / "my_pairs.source.json").read_text())
    assert provenance["sha256"] == sha and provenance["table"]["url"] == table["url"]

    stats = run(p)
    assert stats["sources"]["my_pairs"] == {"input": 7, "kept": 2, "quarantined": 5}
    assert quarantined(p, "my_pairs") == {4: "malformed", 5: "missing_field", 6: "mixed_script", 7: "leakage",
                                          8: "duplicate"}
    train = [r for r in read_jsonl(out / "train.jsonl") if r["source"] == "my_pairs"]
    assert [(r["bo"], r["zh"]) for r in train] == [("བཀྲ་ཤིས་བདེ་ལེགས།", "吉祥如意"), ("ཐུགས་རྗེ་ཆེ།", "非常感谢")]
    # The table went to train only; the built-in dev and test splits are untouched.
    assert {s: (out / f"{s}.jsonl").read_bytes() for s in ("dev", "test")} == before


def test_changed_remote_file_fails_with_the_table_and_hashes(small, server):
    raw, p = small
    serve("/changed.tsv", b"tibetan\tchinese\nx\ty\n")
    table = {"name": "changed", "type": "file", "url": f"{server}/changed.tsv", "sha256": "0" * 64, "task": "mt",
             "columns": {"bo": "tibetan", "zh": "chinese"}}
    with pytest.raises(FetchError, match=r"tables/changed.tsv: sha256 mismatch .* expected 0{64}"):
        fetch_into(raw, with_tables(p, table))
    assert not (raw / "tables" / "changed.tsv").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_headline_table_split_on_its_own_keeps_docs_together(small, tmp_path, fmt):
    raw, p = small
    articles = headlines(40)
    articles[5]["content"] = "short"  # body_too_short
    path = tmp_path / f"news.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in articles) + "{broken\n")
    else:
        pq.write_table(pa.Table.from_pylist(articles), path)
    table = {"name": "news", "type": "file", "url": str(path), "task": "headline", "use": "split",
             "columns": {"title": "headline", "body": "content", "doc": "article"}}
    p = with_tables(p, table)
    fetch_into(raw, p)
    stats = run(p)
    extra = 1 if fmt == "jsonl" else 0
    assert stats["sources"]["news"] == {"input": 40 + extra, "kept": 39, "quarantined": 1 + extra}
    assert quarantined(p, "news")[6] == "body_too_short"
    if fmt == "jsonl":
        assert quarantined(p, "news")[41] == "malformed"
    split_of = {}
    for split in ("train", "dev", "test"):
        for r in read_jsonl(raw.parent / "prepared" / "headline" / f"{split}.jsonl"):
            if r["source"] == "news":
                assert split_of.setdefault(r["doc"], split) == split  # both rows of an article in one split
    assert set(split_of.values()) == {"train", "dev", "test"}


def dataset_folder(root):
    """A dataset repository snapshot as the hub serves it: parquet shards named by split."""
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(headlines(12)), root / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(headlines(6, offset=100)), root / "data" / "test-00000-of-00001.parquet")
    (root / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# a CMHG-like snapshot\n")
    return root


def test_hf_dataset_from_local_folder_and_from_the_mirror_snapshot(small, tmp_path):
    raw, p = small
    folder = dataset_folder(tmp_path / "local_ds")
    commit = "0123456789abcdef0123456789abcdef01234567"
    mirror = tmp_path / "mirror"
    dataset_folder(mirror / "huggingface" / "datasets" / "KEVVVV" / "CMHG" / commit)
    cols = {"title": "headline", "body": "content"}
    local = {"name": "local_news", "type": "hf", "dataset": str(folder), "split": "test", "task": "headline",
             "columns": cols, "use": "test"}
    hub = {"name": "cmhg", "type": "hf", "dataset": "KEVVVV/CMHG", "revision": commit, "split": "train",
           "task": "headline", "columns": cols, "use": "train"}
    p = with_tables(p, local, hub)
    assert fetch_into(raw, p, mirror=mirror).fetched == 2
    exported = read_jsonl(raw / "tables" / "cmhg.jsonl")
    assert [set(r) for r in exported] == [{"headline", "content"}] * 12  # only the mapped columns travel
    provenance = json.loads((raw / "tables" / "cmhg.source.json").read_text())
    assert provenance["rows"] == 12 and provenance["resolved_revision"] == commit

    stats = run(p)
    assert stats["sources"]["cmhg"]["kept"] == 12 and stats["sources"]["local_news"]["kept"] == 6
    test = [r for r in read_jsonl(raw.parent / "prepared" / "headline" / "test.jsonl") if r["source"] == "local_news"]
    assert len(test) == 6

    again = fetch_into(raw, p, mirror=mirror)
    assert (again.fetched, again.up_to_date) == (0, 2)
    fetch_into(raw, with_tables(p, local), mirror=mirror)  # cmhg removed from params: its files go too
    assert sorted(f.name for f in (raw / "tables").iterdir()) == ["local_news.jsonl", "local_news.source.json"]


def test_hf_problems_are_clear_errors(small, tmp_path):
    raw, p = small
    folder = dataset_folder(tmp_path / "ds")
    base = {"type": "hf", "dataset": str(folder), "task": "headline", "columns": {"title": "headline", "body": "body"}}
    with pytest.raises(FetchError, match=r"wrong_column: columns \['body'\] not in .*has: headline, content"):
        fetch_into(raw, with_tables(p, {**base, "name": "wrong_column"}))
    with pytest.raises(FetchError, match=r"no_split: cannot load .*split 'validation'"):
        fetch_into(raw, with_tables(p, {**base, "name": "no_split", "split": "validation",
                                        "columns": {"title": "headline", "body": "content"}}))
    hub = {**base, "name": "absent", "dataset": "someone/absent", "revision": "f" * 40}
    with pytest.raises(FetchError, match=r"absent: someone/absent@f{40} missing from mirror"):
        fetch_into(raw, with_tables(p, hub), mirror=tmp_path)


def test_bad_table_definitions_are_all_listed(params):
    bad = [
        {"name": "lotsawa", "type": "file", "url": "https://x.org/a.tsv", "task": "mt",
         "columns": {"bo": "b", "zh": "z"}},
        {"name": "Bad Name", "type": "ftp", "task": "summary", "columns": {}, "use": "sometimes", "colour": 1},
        {"name": "pairs", "type": "file", "url": "https://x.org/a.xlsx", "sha256": "abc", "task": "mt",
         "columns": {"bo": "b", "lang": "l"}},
        {"name": "news", "type": "hf", "dataset": "KEVVVV/CMHG", "task": "headline", "url": "https://x.org",
         "columns": {"title": "t", "body": "b"}},
        {"name": "news", "type": "hf", "dataset": "KEVVVV/CMHG", "revision": "main", "task": "headline",
         "columns": {"title": "t", "body": "b"}},
        {"name": "news", "type": "hf", "dataset": "KEVVVV/CMHG", "revision": "main", "task": "headline",
         "columns": {"title": "t", "body": "b"}},
    ]
    with pytest.raises(SemrlError) as e:
        read_tables(with_tables(params, *bad)["fetch"]["tables"])
    text = str(e.value)
    for expected in ("fetch.tables[0] (lotsawa): name 'lotsawa' is a built-in corpus",
                     "fetch.tables[1] (Bad Name): unknown keys ['colour']", "name must be lowercase",
                     "type must be one of hf, file, got 'ftp'", "task must be one of mt, headline",
                     "use must be one of train, dev, test, split", "[2] (pairs): columns lacks ['zh']",
                     "columns has unknown fields ['lang']", "format must be one of tsv, csv, jsonl, parquet",
                     "sha256 must be 64 lowercase hex", "[3] (news): hub dataset KEVVVV/CMHG needs a revision",
                     "url is for type file", "[5] (news): duplicate name 'news' (first at fetch.tables[4])"):
        assert expected in text, expected
    assert "fetch.tables[4] (news):" not in text  # a valid entry raises nothing
    ok = copy.deepcopy(bad[4])
    assert read_tables(with_tables(params, ok)["fetch"]["tables"])[0].format == "jsonl"


PAIRS = [("བཀྲ་ཤིས་བདེ་ལེགས།", "吉祥如意"), ("ཐུགས་རྗེ་ཆེ།", "非常感谢"), ("ཁྱེད་རང་སྐུ་ཁམས་བཟང་།", "你身体好吗"),
         ("ང་བོད་པ་ཡིན།", "我是藏族人"), ("ཉིན་མོ་བདེ་ལེགས།", "白天吉祥")]


def local_table(p, path, fmt):
    return with_tables(p, {"name": "mine", "type": "file", "url": str(path), "format": fmt, "task": "mt",
                           "columns": {"bo": "bo", "zh": "zh"}, "use": "train"})



def test_a_tsv_row_starting_with_a_quote_is_one_row_not_a_merge(small, tmp_path):
    """Seen before: the third line starting with `"` made csv quote-merge three rows into one."""
    raw, p = small
    rows = [f"{bo}\t{zh}" for bo, zh in PAIRS]
    rows[1] = '"' + rows[1]  # line 3
    path = tmp_path / "pairs.tsv"
    path.write_text("bo\tzh\n" + "\n".join(rows) + "\n", encoding="utf-8")
    p = local_table(p, path, "tsv")
    fetch_into(raw, p)
    stats = run(p)
    assert stats["sources"]["mine"]["input"] == 5  # every line a row: kept + quarantined = 5
    assert stats["sources"]["mine"]["kept"] + stats["sources"]["mine"]["quarantined"] == 5
    kept = {r["bo"] for r in read_jsonl(raw.parent / "prepared" / "mt" / "train.jsonl") if r["source"] == "mine"}
    assert kept >= {PAIRS[i][0] for i in (0, 2, 3, 4)}  # the rows around it are their own rows


def test_a_quoted_csv_field_keeps_its_line_break_and_its_line_number(small, tmp_path):
    raw, p = small
    path = tmp_path / "pairs.csv"
    path.write_text('bo,zh\n"ཁྱེད་རང་སྐུ་ཁམས་བཟང་།","你身体\n好吗"\n"ང་བོད་པ་ཡིན།",我是藏族人\n', encoding="utf-8")
    p = local_table(p, path, "csv")
    fetch_into(raw, p)
    stats = run(p)
    assert stats["sources"]["mine"]["input"] == 2  # two records over three lines
    rows = {r["bo"]: r for r in read_jsonl(raw.parent / "prepared" / "mt" / "train.jsonl") if r["source"] == "mine"}
    assert rows["ང་བོད་པ་ཡིན།"]["id"].endswith("000004")  # the record starts on line 4
    assert stats["sources"]["mine"]["kept"] + stats["sources"]["mine"]["quarantined"] == 2


def test_line_separators_inside_a_field_do_not_split_the_row(small, tmp_path):
    """U+2028 and U+0085 are line breaks to str.splitlines, not to TSV, CSV or JSON Lines."""
    raw, p = small
    for fmt, body in (("tsv", "bo\tzh\nབཀྲ་ཤིས\u2028བདེ་ལེགས།\t吉祥\u0085如意\nཐུགས་རྗེ་ཆེ།\t非常感谢\n"),
                      ("jsonl", json.dumps({"bo": "བཀྲ་ཤིས\u2028བདེ་ལེགས།", "zh": "吉祥\u0085如意"}, ensure_ascii=False)
                       + "\n" + json.dumps({"bo": "ཐུགས་རྗེ་ཆེ།", "zh": "非常感谢"}, ensure_ascii=False) + "\n")):
        path = tmp_path / f"pairs.{fmt}"
        path.write_text(body, encoding="utf-8")
        q = local_table(p, path, fmt)
        fetch_into(raw, q)
        stats = run(q)
        assert stats["sources"]["mine"]["input"] == 2, fmt
        assert stats["sources"]["mine"]["kept"] + stats["sources"]["mine"]["quarantined"] == 2, fmt


def test_an_unbalanced_csv_quote_fails_naming_the_file_and_line(small, tmp_path):
    raw, p = small
    path = tmp_path / "pairs.csv"
    path.write_text('bo,zh\nབཀྲ་ཤིས་བདེ་ལེགས།,吉祥如意\n"ཐུགས་རྗེ་ཆེ།,非常感谢\nང་བོད་པ་ཡིན།,我是藏族人\n', encoding="utf-8")
    p = local_table(p, path, "csv")
    fetch_into(raw, p)
    with pytest.raises(SemrlError, match=r"tables/mine.csv:3: malformed CSV record"):
        run(p)
