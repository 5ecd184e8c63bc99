"""Shared fixtures and the suite's tiers. The real corpora (from the offline mirror, fetched lazily by the
fixtures that need them), the smoke project built once per test session and shared by every pytest-xdist
worker (each worker works on its own copy), and small raw trees cut from the real files for bad-input tests.

Tiers (pytest markers, docs/tests.md): `unit` — no corpus, no servers, no subprocess training: pure functions
and tiny in-memory models; `pipeline` — the smoke project, stages, flows, servers; `bench` — the benchmark
scripts run on the smoke project (they print what they promise; tools, not the pipeline); `faults` — injected
failures on the trained smoke project. A test that asks for a project fixture is `pipeline` unless marked
`bench` or `faults`; an unmarked test that asks for none is `unit`. A `unit` test that asks for a project
fixture is a collection error. `make test` runs unit and pipeline; CI runs every tier."""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from semrl.core.env import QUIET_ENV

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {**QUIET_ENV, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # nothing downloads in tests
os.environ.update(OFFLINE_ENV)
# Tests never write into a user's tracking server or Prefect API: every test repo has its own sqlite
# store, and Prefect runs ephemeral with its state in a temporary PREFECT_HOME.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="semrl-prefect-")
# A relative SEMRL_DATA_MIRROR (`SEMRL_DATA_MIRROR=../shared/corpora pytest`) means the directory pytest was
# started from; tests run commands in other directories, so it is made absolute once, here (make does the
# same for `make test`, against the directory make was called from).
if os.environ.get("SEMRL_DATA_MIRROR") and not os.path.isabs(os.environ["SEMRL_DATA_MIRROR"]):
    os.environ["SEMRL_DATA_MIRROR"] = os.path.abspath(os.environ["SEMRL_DATA_MIRROR"])

TIERS = ("unit", "pipeline", "bench", "faults", "rehearsal")
# Fixtures that need the corpora or the smoke project: a test asking for one is not `unit`.
PROJECT_FIXTURES = frozenset({"mirror", "prepared_project", "smoke_project", "trained_project", "reported_project",
                              "repo_copy", "smoke_repo", "trained_repo", "small", "smoke_mt"})
TRAINED = frozenset({"trained_project", "trained_repo", "reported_project"})
CORPUS_CACHE_ENV = "SEMRL_CORPUS_CACHE"  # where the suite keeps the pinned corpora it fetched itself
TEST_CACHE_ENV = "SEMRL_TEST_CACHE"  # set: built smoke projects are kept there across sessions, keyed by inputs


def corpus_cache() -> Path:
    return Path(os.environ.get(CORPUS_CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "semrl" / "corpora")


def mirror_dir() -> Path | None:
    """SEMRL_DATA_MIRROR, else the shared/corpora checkout beside the repo (CI and developer machines;
    SEMRL_SHARED_CORPORA names another), else the suite's own corpus cache once complete."""
    shared = os.environ.get("SEMRL_SHARED_CORPORA") or REPO.parent / "shared" / "corpora"
    for c in (os.environ.get("SEMRL_DATA_MIRROR"), shared, corpus_cache()):
        if c and (Path(c) / "MANIFEST.tsv").is_file():
            return Path(c)
    return None


def tier_of(item) -> str:
    marked = [t for t in TIERS if item.get_closest_marker(t)]
    if marked:
        return marked[0]
    return "pipeline" if PROJECT_FIXTURES & set(item.fixturenames) else "unit"


def pytest_collection_modifyitems(config, items):
    """Every test gets its tier, and the fast tiers run first: the quickest feedback, and the other xdist
    workers work through unit tests while the first builds the shared smoke project."""
    problems = []
    for item in items:
        marked = [t for t in TIERS if item.get_closest_marker(t)]
        if len(marked) > 1:
            problems.append(f"{item.nodeid}: in more than one tier ({', '.join(marked)})")
        elif marked == ["unit"] and PROJECT_FIXTURES & set(item.fixturenames):
            problems.append(f"{item.nodeid}: marked unit but asks for "
                            f"{', '.join(sorted(PROJECT_FIXTURES & set(item.fixturenames)))}")
        if not marked:
            item.add_marker(tier_of(item))
    if problems:
        raise pytest.UsageError("semrl tests: tier markers are wrong:\n" + "\n".join(problems))
    # Within a tier, tests of the prepared or smoke project before those of the trained one: they run on the
    # other workers while the first to need the trained project builds it.
    # The report's tests last: their project is built in the background after the trained one.
    items.sort(key=lambda item: (TIERS.index(tier_of(item)), bool(TRAINED & set(item.fixturenames)),
                                 "reported_project" in item.fixturenames))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test may skip only for hardware it cannot have here (its reason starts with "hardware:", e.g.
    CUDA); any other skip fails, so a green run never hides a test that did not run."""
    report = (yield).get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not reason.startswith(("hardware:", "Skipped: hardware:")):
            report.outcome = "failed"
            report.longrepr = f"skipped for a reason other than hardware: {reason}"


def session_root(config) -> Path:
    """The session's temporary root: the controller's basetemp, the parent of an xdist worker's."""
    base = config._tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Each test's span on its worker (setup to teardown), for the summary of where the suite's time went."""
    import time

    start = time.time()
    yield
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with (session_root(item.config) / f"timeline-{worker}.tsv").open("a", encoding="utf-8") as f:
        f.write(f"{worker}\t{tier_of(item)}\t{item.nodeid}\t{start:.3f}\t{time.time():.3f}\n")


def timeline_lines(root: Path) -> list[str]:
    """Where the wall time went, from the workers' spans: each worker's busy time and how long it sat idle
    before the last test ended (a long test scheduled last keeps the others waiting), each tier's share, and
    the shared projects built this session (the first pipeline test of each worker waits for them)."""
    spans = [line.split("\t") for f in sorted(root.glob("timeline-*.tsv"))
             for line in f.read_text(encoding="utf-8").splitlines()]
    if not spans:
        return []
    start, end = min(float(s[3]) for s in spans), max(float(s[4]) for s in spans)
    workers, tiers = {}, {}
    for worker, tier, _, a, b in spans:
        busy, last = workers.get(worker, (0.0, start))
        workers[worker] = (busy + float(b) - float(a), max(last, float(b)))
        tiers[tier] = tiers.get(tier, 0.0) + float(b) - float(a)
    out = [f"semrl: {len(spans)} tests in {end - start:.0f} s on {len(workers)} worker(s); " + "; ".join(
        f"{w} busy {busy:.0f} s, done {end - last:.0f} s before the end" for w, (busy, last) in sorted(workers.items()))
        + " | by tier: " + ", ".join(f"{t} {sec:.0f} s" for t, sec in sorted(tiers.items(), key=lambda kv: -kv[1]))]
    projects = Path(os.environ.get(TEST_CACHE_ENV) or root) / "projects"  # as shared_dir has them
    builds = [json.loads(f.read_text() or "{}") | {"name": f.name.split("-")[0]} for f in projects.glob("*.built")]
    if builds := [b for b in builds if b.get("finished", 0) >= start]:
        out.append("semrl: shared projects built this session: " + ", ".join(
            f"{b['name']} {b['seconds']:.0f} s" for b in sorted(builds, key=lambda b: b["finished"])))
    return out


def pytest_terminal_summary(terminalreporter):
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"semrl: {skipped} test(s) skipped, all for hardware (CUDA) this machine lacks"
                                if skipped else "semrl: no test skipped")
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        for line in timeline_lines(session_root(terminalreporter.config)):
            terminalreporter.write_line(line)


def pytest_unconfigure(config):
    """Prefect's in-process test server logs "Stopping temporary server" from an atexit hook, after pytest has
    closed the streams its handlers write to; logging would print a "--- Logging error ---" traceback that
    reads like a failure of a green run. Such handler errors are not ours to report once the suite is done."""
    import logging

    logging.raiseExceptions = False


def shared_dir(tmp_path_factory) -> Path:
    """Where the workers of one session meet: SEMRL_TEST_CACHE when set (kept across sessions), else the
    session's temporary root (xdist gives each worker a folder below it)."""
    if os.environ.get(TEST_CACHE_ENV):
        root = Path(os.environ[TEST_CACHE_ENV])
    else:
        base = tmp_path_factory.getbasetemp()
        root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root.mkdir(parents=True, exist_ok=True)
    return root


_MIRROR_FAILURE: list[str] = []  # one fetch attempt per process: later tests get the same one line


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> Path:
    """The corpus mirror. Without one the suite fetches the pinned sources once into its cache (sha256-verified,
    one worker at a time); offline (SEMRL_OFFLINE=1, or the fetch fails) each test that needs the corpora
    errors with one line — it never passes by skipping what needs the data."""
    found = mirror_dir()
    if found is not None:
        return found
    cache = corpus_cache()
    cache.parent.mkdir(parents=True, exist_ok=True)
    why = "SEMRL_OFFLINE is set"
    if not os.environ.get("SEMRL_OFFLINE") and not _MIRROR_FAILURE:
        from semrl.core.config import FetchConfig
        from semrl.data.fetch import build_mirror
        from semrl.data.sources import read_sources

        with FileLock(str(cache) + ".lock"):
            if mirror_dir() is not None:  # another worker fetched it meanwhile
                return mirror_dir()
            print(f"\nsemrl tests: no corpus mirror; fetching the pinned sources of data/sources.tsv once into {cache}")
            try:
                build_mirror(read_sources(REPO / "data" / "sources.tsv"), cache, FetchConfig(retries=2, timeout_s=20))
                return cache
            except Exception as e:  # one line, whatever failed
                _MIRROR_FAILURE.append(f"fetching them failed: {str(e).splitlines()[0]}")
    why = _MIRROR_FAILURE[0] if _MIRROR_FAILURE else why
    pytest.fail(f"semrl tests: no corpus mirror (SEMRL_DATA_MIRROR, ../shared/corpora) and no cache at {cache}; "
                f"{why}. Run once online, or point SEMRL_DATA_MIRROR at a mirror.", pytrace=False)


def child_env(extra: dict | None = None) -> dict:
    """The environment for a child process. mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI into this
    process, so a child would log wherever the last test pointed: children get only what a test passes."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    return {**inherited, **OFFLINE_ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(extra or {})}


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = child_env(env)
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_stage(stage: str, params_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a DVC stage script as DVC would, with another params file; returns the finished process."""
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), "--params", str(params_path)],
                          capture_output=True, text=True, env=env)


# ---------------------------------------------------------------- the smoke project, built once a session


def project_files() -> list[str]:
    """The tracked project as a clean clone has it (plus files not yet committed, not ignored)."""
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO).stdout.split("\n")
    return [rel for rel in filter(None, files) if (REPO / rel).is_file()]


@functools.cache
def _inputs_key(mirror: Path) -> str:
    """What a built project depends on: every project file but the tests (copied fresh into each copy), the
    corpus manifest, and the interpreter and training stack."""
    from importlib.metadata import version  # not the packages themselves: importing them from the build thread
    # while a test imports them races their lazy module loaders

    stack = "|".join(version(name) for name in ("torch", "transformers", "trl", "peft", "dvc", "prefect", "mlflow"))
    h = hashlib.sha256(f"{sys.version}|{stack}".encode())
    for rel in sorted(project_files()):
        if not rel.startswith("tests/"):
            h.update(rel.encode() + b"\0" + (REPO / rel).read_bytes() + b"\0")
    h.update((mirror / "MANIFEST.tsv").read_bytes())
    return h.hexdigest()[:16]


def project_dir(tmp_path_factory, mirror: Path, name: str) -> Path:
    """Where the shared project `name` is built (keyed by its inputs)."""
    root = shared_dir(tmp_path_factory) / "projects"
    root.mkdir(exist_ok=True)
    return root / f"{name}-{_inputs_key(mirror)}"


def built(tmp_path_factory, mirror: Path, name: str, build) -> Path:
    """The project `name`, built once by whichever process comes first (the others wait on its lock) in the
    shared folder, keyed by its inputs; `build(dest)` makes it."""
    dest = project_dir(tmp_path_factory, mirror, name)
    done = dest.with_name(dest.name + ".built")
    with FileLock(str(dest) + ".lock"):
        if not done.is_file():
            if dest.exists():  # a half-built one from a killed session
                shutil.rmtree(dest)
            import time

            start = time.time()
            build(dest)
            done.write_text(json.dumps({"seconds": round(time.time() - start, 1), "finished": time.time()}))
    return dest


def relocate_tracking(db: Path, old: Path, new: Path) -> None:
    """MLflow keeps absolute artifact paths (experiments, runs, model versions) in its store: a copied project
    would write its runs' artifacts into the original. Every text column naming `old` is made to name `new`."""
    con = sqlite3.connect(db)
    try:
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            for column in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                if any(t in (column[2] or "").upper() for t in ("CHAR", "TEXT")):
                    col = column[1]
                    con.execute(f'UPDATE "{table}" SET "{col}" = replace("{col}", ?, ?) WHERE "{col}" LIKE ?',
                                (f"{old}/", f"{new}/", f"%{old}/%"))
        con.commit()
    finally:
        con.close()


def copy_project(src: Path, dest: Path, ignore=None) -> Path:
    """A working copy of a built project: its own files, MLflow store pointing at its own artifacts, and the
    tests as they are now (a built project is keyed without them)."""
    shutil.copytree(src, dest, symlinks=True, ignore=ignore)
    if (dest / "mlflow.db").is_file():
        relocate_tracking(dest / "mlflow.db", src, dest)
    shutil.rmtree(dest / "tests", ignore_errors=True)
    shutil.copytree(REPO / "tests", dest / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _build_prepared(dest: Path, source: None, mirror: Path) -> None:
    for rel in project_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    run(["git", "init", "-q"], dest)
    run(["dvc", "repro", "prepare"], dest, {"SEMRL_DATA_MIRROR": str(mirror)})


def _build_smoke(dest: Path, prepared: Path, mirror: Path) -> None:
    from semrl.core.config import apply_overlay

    copy_project(prepared, dest)
    apply_overlay(dest / "params.yaml", dest / "configs" / "smoke.yaml")
    run(["dvc", "repro", "embedder"], dest, {"SEMRL_DATA_MIRROR": str(mirror)})


def _build_trained(dest: Path, smoke: Path, mirror: Path) -> None:
    copy_project(smoke, dest)
    run(["dvc", "repro", "train@mt"], dest, {"SEMRL_DATA_MIRROR": str(mirror)})


def _build_reported(dest: Path, trained: Path, mirror: Path) -> None:
    copy_project(trained, dest)
    run(["dvc", "repro", "report"], dest, {"SEMRL_DATA_MIRROR": str(mirror)})


def pytest_collection_finish(session):
    """Start building the shared projects this session will need at once, in the background of one process (the
    first xdist worker, or pytest alone), while the workers run unit tests; the fixtures then wait on the build's
    locks. A failed build leaves no marker, and the fixture that needs it builds again and reports the error."""
    import threading

    if session.config.option.collectonly:  # nothing will run: nothing to build (its build would outlive pytest)
        return
    needed = {name for item in session.items for name in item.fixturenames} & PROJECT_FIXTURES - {"mirror"}
    found = mirror_dir()
    if not needed or found is None or os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":
        return
    factory = session.config._tmp_path_factory
    prepared_only = needed <= {"prepared_project", "repo_copy", "small"}
    last = ("reported" if "reported_project" in needed else "trained" if needed & TRAINED
            else "prepared" if prepared_only else "smoke")

    def build_all():
        try:
            ensure_project(factory, found, last)
        except Exception:  # the fixture that needs it builds again and fails with the error
            pass

    threading.Thread(target=build_all, name="semrl-smoke-build", daemon=True).start()


# Each shared project: the one it is copied from, and what then makes it.
PROJECT_BUILDS = {"prepared": (None, _build_prepared), "smoke": ("prepared", _build_smoke),
                  "trained": ("smoke", _build_trained), "reported": ("trained", _build_reported)}


def ensure_project(tmp_path_factory, mirror: Path, name: str) -> Path:
    """The shared project `name`, with the ones before it, each built once (`built`)."""
    source, build = PROJECT_BUILDS[name]
    src = ensure_project(tmp_path_factory, mirror, source) if source else None
    return built(tmp_path_factory, mirror, name, lambda dest: build(dest, src, mirror))


@pytest.fixture(scope="session")
def prepared_project(tmp_path_factory, mirror) -> Path:
    """The shared build of the tracked project with `dvc repro prepare` run (read-only: tests use copies)."""
    return ensure_project(tmp_path_factory, mirror, "prepared")


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory, prepared_project, mirror) -> Path:
    """The shared build with the smoke overlay and `dvc repro embedder` (base + both embedders)."""
    return ensure_project(tmp_path_factory, mirror, "smoke")


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, smoke_project, mirror) -> Path:
    """The shared smoke build after `dvc repro train@mt`: one Prefect flow run of the cold starts and their
    branches, every seed."""
    return ensure_project(tmp_path_factory, mirror, "trained")


@pytest.fixture(scope="session")
def reported_project(tmp_path_factory, trained_project, mirror) -> Path:
    """The shared trained build after `dvc repro report` (evaluate@mt and the report): built in the background
    after the trained project, while the workers run the tests that need only that."""
    return ensure_project(tmp_path_factory, mirror, "reported")


@pytest.fixture(scope="session")
def repo_copy(tmp_path_factory, prepared_project) -> Path:
    """This worker's copy of the tracked project (as a clean clone has it) with `dvc repro prepare` run."""
    return copy_project(prepared_project, tmp_path_factory.mktemp("repo") / "repo")


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory, smoke_project) -> Path:
    """This worker's copy of the smoke project: repo_copy with the smoke overlay and `dvc repro embedder`."""
    return copy_project(smoke_project, tmp_path_factory.mktemp("smoke") / "repo")


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory, trained_project) -> Path:
    """This worker's copy of the trained smoke project (`dvc repro train@mt` done)."""
    return copy_project(trained_project, tmp_path_factory.mktemp("trained") / "repo")


@pytest.fixture(scope="module")
def smoke_mt(smoke_repo):
    """(config, the mt task, the cold start's starting model — the base —, a tokenizer of it) of the smoke
    project, with the working directory in it for the module (the config's paths are relative to it)."""
    from transformers import AutoTokenizer

    from semrl.core.config import load_config
    from semrl.core.methods import get_method
    from semrl.core.tasks import get_task
    from semrl.training.trainers import init_model_dir

    here = os.getcwd()
    os.chdir(smoke_repo)
    try:
        cfg = load_config("params.yaml")
        init = init_model_dir(cfg, "mt", get_method(cfg, "coldstart"), 0)
        yield cfg, get_task(cfg, "mt"), init, AutoTokenizer.from_pretrained(init)
    finally:
        os.chdir(here)


def mlflow_runs(repo: Path) -> dict:
    """name -> the newest MLflow run of that name in a test repo's store."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["semrl"], output_format="list", order_by=["attributes.start_time ASC"])
    return {r.info.run_name: r for r in runs}


@pytest.fixture(scope="session")
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def small(tmp_path, prepared_project, params):
    """A small raw tree cut from the real corpora plus params pointing at it; tests then break it."""
    src, raw = prepared_project / "data" / "raw", tmp_path / "raw"
    pairs = sorted((src / "lotsawa" / "text-pairs").glob("*-bo.txt"))[:6]
    for bo in pairs:
        for f in (bo, bo.with_name(bo.name.replace("-bo.txt", "-zh.txt"))):
            (raw / "lotsawa" / "text-pairs").mkdir(parents=True, exist_ok=True)
            shutil.copy(f, raw / "lotsawa" / "text-pairs" / f.name)
    for sub, n in (("news", 12), ("childrens_lit", 3)):
        (raw / "nanhai" / sub).mkdir(parents=True)
        for f in sorted((src / "nanhai" / sub).glob("*.txt"))[:n]:
            shutil.copy(f, raw / "nanhai" / sub / f.name)
    (raw / "cmrc2018").mkdir()
    for name in ("cmrc2018_dev.json", "cmrc2018_trial.json"):
        data = json.loads((src / "cmrc2018" / name).read_text(encoding="utf-8"))
        data["data"] = data["data"][:3]
        (raw / "cmrc2018" / name).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    (raw / "xiehouyu").mkdir()
    items = json.loads((src / "xiehouyu" / "xiehouyu.json").read_text(encoding="utf-8"))[:40]
    (raw / "xiehouyu" / "xiehouyu.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    (raw / "cldr").mkdir()
    for name in ("bo_zh_pairs.tsv", "bo_zh_dates.tsv"):
        shutil.copy(src / "cldr" / name, raw / "cldr" / name)
    p = copy.deepcopy(params)
    p["prepare"].update(raw_dir=str(raw), out_dir=str(tmp_path / "prepared"))
    for task in ("mt", "headline"):
        p["prepare"][task].update(dev_frac=0.25, test_frac=0.25)
    return raw, p
