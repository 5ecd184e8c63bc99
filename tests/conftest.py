"""Shared fixtures: the real corpora (from the offline mirror), a DVC-reproduced copy of the repo, and
small raw trees cut from the real files for bad-input tests."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from semrl.core.env import QUIET_ENV

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {**QUIET_ENV, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # nothing downloads in tests
os.environ.update(OFFLINE_ENV)
# Tests never write into a user's tracking server or Prefect API: every test repo has its own sqlite
# store, and Prefect runs ephemeral with its state in a temporary PREFECT_HOME.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="semrl-prefect-")


CORPUS_CACHE_ENV = "SEMRL_CORPUS_CACHE"  # where the suite keeps the pinned corpora it fetched itself


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


def pytest_configure(config):
    """The suite runs on the real corpora, always: without a mirror it fetches the pinned sources once into
    its cache (sha256-verified); offline (SEMRL_OFFLINE=1, or the fetch fails) it stops with one line —
    it never passes by skipping what needs the data."""
    if mirror_dir() is not None:
        return
    cache = corpus_cache()
    why = "SEMRL_OFFLINE is set"
    if not os.environ.get("SEMRL_OFFLINE"):
        from semrl.core.config import FetchConfig
        from semrl.data.fetch import build_mirror
        from semrl.data.sources import read_sources

        print(f"\nsemrl tests: no corpus mirror; fetching the pinned sources of data/sources.tsv once into {cache}")
        try:
            r = build_mirror(read_sources(REPO / "data" / "sources.tsv"), cache, FetchConfig(retries=2, timeout_s=20))
            print(f"semrl tests: corpus cache ready ({r.fetched} fetched, {r.up_to_date} already there)")
            return
        except Exception as e:  # one line, whatever failed
            why = f"fetching them failed: {str(e).splitlines()[0]}"
    raise pytest.UsageError(f"semrl tests: no corpus mirror (SEMRL_DATA_MIRROR, ../shared/corpora) and no cache at "
                            f"{cache}; {why}. Run once online, or point SEMRL_DATA_MIRROR at a mirror.")


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


def pytest_terminal_summary(terminalreporter):
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"semrl: {skipped} test(s) skipped, all for hardware (CUDA) this machine lacks"
                                if skipped else "semrl: no test skipped")


def pytest_unconfigure(config):
    """Prefect's in-process test server logs "Stopping temporary server" from an atexit hook, after pytest has
    closed the streams its handlers write to; logging would print a "--- Logging error ---" traceback that
    reads like a failure of a green run. Such handler errors are not ours to report once the suite is done."""
    import logging

    logging.raiseExceptions = False


@pytest.fixture(scope="session")
def mirror() -> Path:
    m = mirror_dir()
    assert m is not None, "pytest_configure guarantees a mirror"
    return m


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


@pytest.fixture(scope="session")
def repo_copy(tmp_path_factory, mirror) -> Path:
    """A fresh copy of the tracked project (as a clean clone has it) with `dvc repro prepare` run against
    the mirror."""
    dest = tmp_path_factory.mktemp("repo")
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO).stdout.split("\n")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    run(["git", "init", "-q"], dest)
    run(["dvc", "repro", "prepare"], dest, {"SEMRL_DATA_MIRROR": str(mirror)})
    return dest


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory, repo_copy, mirror) -> Path:
    """repo_copy with the smoke overlay applied and `dvc repro embedder` run (base + both embedders)."""
    from semrl.core.config import apply_overlay

    dest = tmp_path_factory.mktemp("smoke") / "repo"
    shutil.copytree(repo_copy, dest, symlinks=True)
    apply_overlay(dest / "params.yaml", dest / "configs" / "smoke.yaml")
    run(["dvc", "repro", "embedder"], dest, {"SEMRL_DATA_MIRROR": str(mirror)})
    return dest


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


@pytest.fixture(scope="session")
def trained_repo(smoke_repo, mirror) -> Path:
    """smoke_repo after `dvc repro sft@mt grpo@mt`: the stages coldstart@mt, sft@mt and grpo@mt, each a
    Prefect flow run of its method's seeds."""
    run(["dvc", "repro", "sft@mt", "grpo@mt"], smoke_repo, {"SEMRL_DATA_MIRROR": str(mirror)})
    return smoke_repo


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
def small(tmp_path, repo_copy, params):
    """A small raw tree cut from the real corpora plus params pointing at it; tests then break it."""
    src, raw = repo_copy / "data" / "raw", tmp_path / "raw"
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
