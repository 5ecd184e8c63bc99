"""`fetch` against a real HTTP server on 127.0.0.1 and against mirrors: retries, verification, atomicity."""
import hashlib
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from semrl import SemrlError
from semrl.core.config import FetchConfig
from semrl.data.fetch import FetchError, fetch
from semrl.data.sources import Source, read_sources, sources_from_manifest, write_sources

from conftest import REPO, run_stage

BODY = "བོད་ལྗོངས་ཀྱིས་ཁོར་ཡུག་སྲུང་སྐྱོང་ལམ་བུ་བསྐྲུན། ".encode() * 200


class Handler(BaseHTTPRequestHandler):
    hits: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        n = Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        if self.path == "/ok":
            return self._send(BODY)
        if self.path == "/flaky":  # two 503s, then the file
            return self._send(BODY) if n > 2 else self._send(b"busy", 503)
        if self.path == "/always500":
            return self._send(b"oops", 500)
        if self.path == "/missing":
            return self._send(b"no", 404)
        if self.path == "/slow":
            time.sleep(1.5)
            return self._send(BODY)
        if self.path == "/truncated":  # announces the full length, sends half, closes
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[: len(BODY) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/tampered":
            return self._send(BODY[:-1] + b"X")
        self._send(b"?", 400)

    def _send(self, body: bytes, status: int = 200):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def source(name: str, url: str, body: bytes = BODY) -> Source:
    return Source(f"test/{name}.txt", "test", "url", url, hashlib.sha256(body).hexdigest(), len(body), "CC0-1.0")


def cfg(tmp_path, **kw) -> FetchConfig:
    return FetchConfig(dest=tmp_path / "raw", **{"workers": 4, "timeout_s": 0.5, "retries": 2, "backoff_s": 0.01, **kw})


def no_partials(root: Path) -> bool:
    return not any(p.name.endswith(".part") for p in root.rglob("*")) if root.exists() else True


def test_downloads_and_verifies_in_parallel(server, tmp_path):
    srcs = [source(f"f{i}", f"{server}/ok") for i in range(5)]
    result = fetch(srcs, cfg(tmp_path), show_progress=False)
    assert result.fetched == 5 and all((tmp_path / "raw" / s.name).read_bytes() == BODY for s in srcs)
    again = fetch(srcs, cfg(tmp_path), show_progress=False)
    assert (again.fetched, again.up_to_date) == (0, 5)


def test_transient_503_is_retried(server, tmp_path):
    assert fetch([source("flaky", f"{server}/flaky")], cfg(tmp_path), show_progress=False).fetched == 1
    assert Handler.hits["/flaky"] == 3


@pytest.mark.parametrize("path, message", [
    ("/always500", "failed after 3 attempts from {url}: HTTP 500"),
    ("/slow", "failed after 3 attempts from {url}: "),
    ("/truncated", "failed after 3 attempts from {url}: truncated body"),
    ("/missing", "HTTP 404 for {url} (not retried)"),
])
def test_http_failures_are_one_line_errors_and_leave_nothing(server, tmp_path, path, message):
    url = f"{server}{path}"
    with pytest.raises(FetchError) as e:
        fetch([source("bad", url)], cfg(tmp_path), show_progress=False)
    first = str(e.value).splitlines()[0]
    assert first.startswith("test/bad.txt: ") and message.format(url=url) in first
    assert not (tmp_path / "raw" / "test" / "bad.txt").exists() and no_partials(tmp_path)


def test_hash_mismatch_names_source_url_expected_and_actual(server, tmp_path):
    src = source("tampered", f"{server}/tampered")
    with pytest.raises(FetchError) as e:
        fetch([src], cfg(tmp_path), show_progress=False)
    actual = hashlib.sha256(BODY[:-1] + b"X").hexdigest()
    line = str(e.value).splitlines()[0]
    assert line == (f"test/tampered.txt: sha256 mismatch for {server}/tampered: expected {src.sha256} "
                    f"({len(BODY)} bytes), got {actual} ({len(BODY)} bytes)")
    assert not (tmp_path / "raw" / src.name).exists() and no_partials(tmp_path)


def test_all_failures_are_reported_together(server, tmp_path):
    srcs = [source("good", f"{server}/ok"), source("gone", f"{server}/missing"), source("bad", f"{server}/tampered")]
    with pytest.raises(FetchError) as e:
        fetch(srcs, cfg(tmp_path), show_progress=False)
    lines = str(e.value).splitlines()
    assert lines[-1] == "fetch failed for 2 of 3 files" and len(lines) == 3
    assert (tmp_path / "raw" / "test" / "good.txt").read_bytes() == BODY


def test_stale_partial_files_from_a_killed_run_are_removed(server, tmp_path):
    stale = tmp_path / "raw" / "test" / ".ok.txt.abc.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    fetch([source("ok", f"{server}/ok")], cfg(tmp_path), show_progress=False)
    assert not stale.exists()


def test_mirror_copy_verifies_and_reports_missing_files(tmp_path, mirror):
    sources = [s for s in read_sources(REPO / "data" / "sources.tsv") if s.source == "xiehouyu"]
    assert fetch(sources, cfg(tmp_path, mirror=mirror), show_progress=False).fetched == 2
    fake_mirror = tmp_path / "mirror"
    with pytest.raises(FetchError, match=r"xiehouyu/xiehouyu.json: missing from mirror .* for https://"):
        fetch(sources, cfg(tmp_path / "other", mirror=fake_mirror), show_progress=False)
    # A corrupted mirror file is caught by the same verification as a download.
    rel = next(p for p in mirror.rglob("xiehouyu.json")).relative_to(mirror)
    (fake_mirror / rel).parent.mkdir(parents=True)
    shutil.copy(mirror / rel, fake_mirror / rel)
    with open(fake_mirror / rel, "ab") as f:
        f.write(b" ")
    with pytest.raises(FetchError, match="xiehouyu/xiehouyu.json: sha256 mismatch"):
        fetch(sources[1:], cfg(tmp_path / "third", mirror=fake_mirror), show_progress=False)


def test_source_list_matches_the_mirror_manifest(mirror):
    committed = read_sources(REPO / "data" / "sources.tsv")
    derived = sources_from_manifest(mirror / "MANIFEST.tsv")
    assert [s for s in committed if s.type == "url"] == derived
    assert [s.name for s in committed if s.type == "cldr"] == ["cldr/bo_zh_pairs.tsv", "cldr/bo_zh_dates.tsv"]


def test_bad_source_list_names_file_and_line(tmp_path):
    path = tmp_path / "sources.tsv"
    write_sources(path, [source("a", "http://127.0.0.1/a")])
    path.write_text(path.read_text().replace("CC0-1.0", "CC0-1.0\textra"))
    with pytest.raises(SemrlError, match=r"sources.tsv:2: expected 7 tab-separated columns, found 8"):
        read_sources(path)


def test_stage_cli_exits_nonzero_with_clear_error_and_no_traceback(server, tmp_path):
    write_sources(tmp_path / "sources.tsv", [source("gone", f"{server}/missing")])
    (tmp_path / "params.yaml").write_text(
        f"fetch: {{sources: {tmp_path}/sources.tsv, dest: {tmp_path}/raw, mirror: null, workers: 2,"
        " timeout_s: 1, retries: 0, backoff_s: 0, cldr: false}\n")
    proc = run_stage("fetch", tmp_path / "params.yaml", env={"PATH": "/usr/bin:/bin", "SEMRL_DATA_MIRROR": ""})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"error: test/gone.txt: HTTP 404 for {server}/missing (not retried)" in proc.stderr


def test_the_suite_builds_its_corpus_cache_as_a_mirror(server, tmp_path):
    """Without a mirror the test suite fetches the pinned sources once into a cache laid out as one
    (conftest.pytest_sessionstart): every file sha256-verified, the manifest written last."""
    from semrl.data.fetch import MANIFEST, build_mirror
    from semrl.data.sources import mirror_relpath

    cache = tmp_path / "cache"
    srcs = [source("a", f"{server}/ok"), source("b", f"{server}/flaky")]
    r = build_mirror(srcs, cache, cfg(tmp_path), show_progress=False)
    assert (r.fetched, r.up_to_date) == (2, 0)
    assert (cache / mirror_relpath(f"{server}/ok")).read_bytes() == BODY
    rows = [line.split("\t") for line in (cache / MANIFEST).read_text().splitlines()]
    assert rows[0] == ["url", "sha256", "bytes", "licence", "mirror_path"]  # shared/corpora's manifest
    assert [r[4] for r in rows[1:]] == [mirror_relpath(s.url) for s in srcs]
    assert build_mirror(srcs, cache, cfg(tmp_path), show_progress=False).up_to_date == 2  # nothing again
    broken = tmp_path / "broken"
    with pytest.raises(FetchError, match=r"1 of 2 files could not be had, the first: test/t.txt: sha256 mismatch"):
        build_mirror([source("a", f"{server}/ok"), source("t", f"{server}/tampered")], broken, cfg(tmp_path),
                     show_progress=False)
    assert not (broken / MANIFEST).exists() and no_partials(broken)  # incomplete: no manifest, no partial file


def test_offline_without_mirror_unit_tests_run_and_corpus_tests_stop_with_one_line(tmp_path):
    """The corpora are fetched lazily, by the fixtures that need them: with no mirror, no cache and no network
    the unit tier still runs, and a test that needs the corpora errors with one line saying why."""
    import subprocess
    import sys

    from conftest import child_env

    env = child_env({"SEMRL_DATA_MIRROR": "", "SEMRL_SHARED_CORPORA": str(tmp_path / "none"),
                     "SEMRL_CORPUS_CACHE": str(tmp_path / "cache"), "SEMRL_OFFLINE": "1",
                     "COLUMNS": "1000"})  # pytest's short summary truncates to the terminal's width, CI's is unset
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--durations=0"]
    unit = subprocess.run([*pytest_cmd, "tests/test_text.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert unit.returncode == 0 and "22 passed" in unit.stdout, unit.stdout + unit.stderr
    needs = subprocess.run([*pytest_cmd, "tests/test_fetch.py::test_source_list_matches_the_mirror_manifest"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = needs.stdout + needs.stderr
    assert needs.returncode == 1 and "1 error" in out, out
    # the error itself, then pytest's short summary repeating it: one line each
    line, summary = [line for line in out.splitlines() if "semrl tests: no corpus mirror" in line]
    assert summary.startswith("ERROR tests/test_fetch.py::") and summary.endswith(line), out
    assert "SEMRL_OFFLINE is set" in line and str(tmp_path / "cache") in line
    assert not (tmp_path / "cache").exists()  # offline: nothing fetched, nothing half-written


@pytest.mark.parametrize("url", ["https://raw.githubusercontent.com/o/r/c/%2e%2e/%2e%2e/etc/passwd",
                                 "https://example.org/a/%2E%2E/%2e%2e/%2e%2e/x", "https://example.org/a/./b"])
def test_a_percent_encoded_dot_dot_never_leaves_the_mirror(tmp_path, url):
    from semrl.data.fetch import copy_from_mirror
    from semrl.data.sources import mirror_relpath

    with pytest.raises(SemrlError, match="would leave its folder"):
        mirror_relpath(url)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("secret")
    with pytest.raises(SemrlError, match="would leave its folder"):  # before any read or write
        copy_from_mirror(source("x", url), tmp_path / "raw" / "x", tmp_path / "mirror" / "m")
    assert not (tmp_path / "raw").exists()
