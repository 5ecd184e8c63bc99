"""MLflow tracking: where runs go, how they are tagged, and that a crashed run never stays RUNNING."""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import yaml

from semrl.core.config import Config, TrackingConfig
from semrl.core.io import process_alive

PARENT_RUN_ENV = "SEMRL_PARENT_RUN_ID"  # a flow's MLflow run: the runs of its steps nest under it
# MLflow 3 opens an experiment without this tag in its GenAI view (traces); ours holds training runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# What a model logged by MLflow needs to load (the transformers flavour cannot infer it offline).
MODEL_REQUIREMENTS = ["torch", "transformers", "safetensors", "peft"]


def tracking_config(cfg: TrackingConfig) -> dict[str, str]:
    """Tracking URI (MLFLOW_TRACKING_URI wins, e.g. a running `semrl up` server), experiment, artifact root.
    Relative sqlite paths and artifact roots are made absolute against the project root (the cwd of a
    DVC stage), so runs from any folder land in the same store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return {"uri": uri, "experiment": cfg.experiment, "artifact_root": cfg.artifact_root.resolve().as_uri()}


def setup(config: Config) -> str:
    """Point MLflow at the configured store; create the experiment with an explicit artifact location
    (with a sqlite backend MLflow would otherwise write ./mlruns relative to wherever it runs)."""
    import mlflow

    cfg = tracking_config(config.tracking)
    mlflow.set_tracking_uri(cfg["uri"])
    exp = mlflow.get_experiment_by_name(cfg["experiment"])
    exp_id = exp.experiment_id if exp else \
        mlflow.create_experiment(cfg["experiment"], artifact_location=cfg["artifact_root"])
    if exp is None or exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        mlflow.MlflowClient().set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def pipeline_parent(config: Config) -> str:
    """The MLflow run the runs of one pipeline nest under: the flow's run inside a Prefect flow
    (SEMRL_PARENT_RUN_ID), else a `pipeline-...` run keyed by the git commit, the resolved config and the
    data version, so the DVC stages of one `dvc repro` (separate processes) share one parent, and a rerun
    of the same configuration joins it. It holds no metrics of its own and is created FINISHED."""
    import mlflow

    if os.environ.get(PARENT_RUN_ENV):
        return os.environ[PARENT_RUN_ENV]
    exp_id = setup(config)
    commit, version = git_commit(), data_version()
    key = hashlib.sha256("\n".join([commit, version, config.model_dump_json()]).encode()).hexdigest()[:12]
    client = mlflow.MlflowClient()
    found = client.search_runs([exp_id], filter_string=f"tags.`semrl.pipeline_key` = '{key}'", max_results=1,
                               order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    created = client.create_run(exp_id, run_name=f"pipeline-{commit[:7]}-{key[:6]}", tags={
        "semrl.kind": "pipeline", "semrl.pipeline_key": key, "semrl.profile": config.profile,
        "semrl.git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty"),
        "semrl.data_version": version})
    client.set_terminated(created.info.run_id, "FINISHED")
    return created.info.run_id


def git_commit() -> str:
    """HEAD's sha, with "-dirty" when a tracked file differs from it — other than what the pipeline itself
    writes (dvc.lock and the outputs it lists, e.g. reports/ with `cache: false`): a clean clone's `dvc repro`
    rewrites those, and counting them made every stage after the first one report a dirty commit (and open
    a second pipeline parent run)."""
    try:
        git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout
        sha, root = git("rev-parse", "HEAD").strip(), Path(git("rev-parse", "--show-toplevel").strip())
        changed = git("diff", "--name-only", "HEAD").split()  # tracked files, staged or not, as paths from root
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    written = pipeline_outputs(root)
    edited = [f for f in changed if not any(f == out or f.startswith(out + "/") for out in written)]
    return sha + ("-dirty" if edited else "")


def pipeline_outputs(root: Path) -> list[str]:
    """dvc.lock and every output path it records (relative to the project root); [] for a project without one."""
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    stages = lock.get("stages", {}) if isinstance(lock, dict) else {}
    return ["dvc.lock", *[o["path"].rstrip("/") for st in stages.values() for o in st.get("outs", []) if "path" in o]]


def machine() -> str:
    """The CPU the numbers came from, e.g. "AMD EPYC, 2 cores, AVX2": the same code and seeds give
    bit-identical weights on one machine but not across CPUs with other vector units (README
    "Reproducibility"), so runs and reports say where they ran."""
    import platform

    model, flags = None, set()
    try:  # Linux; elsewhere what platform knows
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    return ", ".join(x for x in (model, f"{os.cpu_count()} cores", vector) if x)


def data_version(lock_path: str | Path = "dvc.lock") -> str:
    """Hash of the prepared data as DVC recorded it (the `prepare` stage's outputs in dvc.lock)."""
    try:
        lock = yaml.safe_load(Path(lock_path).read_text(encoding="utf-8"))
        outs = lock["stages"]["prepare"]["outs"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "unversioned"
    joined = "\n".join(f"{o['path']}:{o.get('md5')}" for o in sorted(outs, key=lambda o: o["path"]))
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]  # MLflow's limit on a param value
    return out


class Terminated(BaseException):
    """SIGTERM turned into an exception so the run is closed as KILLED. A BaseException, as KeyboardInterrupt:
    a library's `except Exception` (a callback, a retry loop) must not swallow it and train on."""


@contextlib.contextmanager
def run(config: Config, name: str, tags: dict[str, str] | None = None,
        log_params: dict[str, Any] | None = None, nested: bool = False) -> Iterator[Any]:
    """An MLflow run named `name`, tagged with profile, git commit and data version; ends FINISHED,
    FAILED on an exception, KILLED on Ctrl-C or SIGTERM."""
    import mlflow

    setup(config)
    commit = git_commit()
    all_tags = {"semrl.profile": config.profile, "semrl.git_commit": commit,
                "mlflow.source.git.commit": commit.removesuffix("-dirty"),
                "semrl.data_version": data_version(), "semrl.machine": machine(), **(tags or {})}

    # While the run is being created or ended a SIGTERM is held back (raising inside MLflow's store calls
    # would leave the run RUNNING with nobody to end it); it takes effect right after.
    held = {"defer": True, "pending": False, "stopping": False, "ended": False}

    def on_term(signum, frame):
        if held["defer"]:
            held["pending"] = True
            return
        if not held["stopping"]:
            held["stopping"] = True
            _repeat_sigterm(held)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    active = mlflow.start_run(run_name=name, tags=all_tags, nested=nested)
    try:
        held["defer"] = False
        if held["pending"]:
            held["pending"] = False
            on_term(signal.SIGTERM, None)
        if log_params:
            mlflow.log_params(flatten(log_params))
        yield active
    except (KeyboardInterrupt, Terminated):
        held["defer"] = True
        _end(active.info.run_id, "KILLED")
        raise
    except BaseException:
        held["defer"] = True
        _end(active.info.run_id, "FAILED")
        raise
    else:
        held["defer"] = True
        _end(active.info.run_id, "FINISHED")
    finally:
        held["ended"] = True
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
            if held["pending"] and not held["stopping"]:  # arrived while the run ended: the enclosing handler
                os.kill(os.getpid(), signal.SIGTERM)       # (or the default) acts on it


REPEAT_SIGTERM_S = 2.0


@contextlib.contextmanager
def sigterm_ignored():
    """While the body runs, SIGTERM is ignored (main thread only; elsewhere a no-op): for work that a SIGTERM
    started and must finish, such as stopping the steps. The handler above repeats the signal every
    REPEAT_SIGTERM_S; a repeat landing in that work cut it short (seen in CI: the flow's stop never reported)."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _repeat_sigterm(held: dict) -> None:
    """Python discards an exception raised while a finaliser or a weakref callback runs ("Exception ignored
    in ..."): a SIGTERM landing there was lost and the step trained on until the flow's SIGKILL, its run left
    RUNNING (seen in CI). Until the run has ended, the signal is sent again every REPEAT_SIGTERM_S."""
    import threading
    import time

    def again() -> None:
        while not held["ended"]:
            time.sleep(REPEAT_SIGTERM_S)
            if not held["ended"] and not held["defer"]:
                os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=again, name="sigterm-repeat", daemon=True).start()


def _end(run_id: str, status: str) -> None:
    """End the active run; if that raises (a second Ctrl-C inside MLflow's own store call), close the run
    through the client, so it never stays RUNNING."""
    import mlflow

    try:
        mlflow.end_run(status)
    except BaseException:
        mlflow.MlflowClient().set_terminated(run_id, status)
        if mlflow.active_run() is not None:  # still on the fluent stack: drop it (the store has the status)
            with contextlib.suppress(Exception):
                mlflow.end_run(status)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def metrics_callback():
    """A transformers TrainerCallback that sends every logged scalar to the active MLflow run, per step."""
    import mlflow
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                scalars = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and k != "epoch"}
                if "rewards/language/mean" in scalars:  # share of sampled completions not in the target script
                    scalars["language_mixing_rate"] = 1.0 - scalars["rewards/language/mean"]
                mlflow.log_metrics(scalars, step=state.global_step)

    return MlflowMetrics()


def close_stale_runs(config: Config, run_key: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this run key whose process is gone (a kill -9 leaves them RUNNING);
    called before a rerun resumes, so a crashed run never stays RUNNING."""
    import socket

    import mlflow

    client = mlflow.MlflowClient()
    stale = client.search_runs([setup(config)],
                               filter_string=f"tags.`semrl.run_key` = '{run_key}' and attributes.status = 'RUNNING'")
    closed = []
    for r in stale:
        pid, host = int(r.data.tags.get("semrl.pid", "0") or 0), r.data.tags.get("semrl.host")
        started = float(r.data.tags["semrl.pid_start"]) if r.data.tags.get("semrl.pid_start") else None
        if host == socket.gethostname() and process_alive(pid, started):  # the same process, not a reused PID
            continue
        client.set_terminated(r.info.run_id, status="KILLED")
        closed.append(r.info.run_id)
    return closed


def log_model(model, tokenizer, name: str = "model"):
    """Log a causal LM in MLflow's transformers flavour (loads with `mlflow.transformers.load_model`); a PEFT
    model is logged as its adapter with a reference to its base model's folder, not as a merged copy."""
    import mlflow

    return mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name=name,
                                         task="text-generation", pip_requirements=MODEL_REQUIREMENTS)


def register(name: str, model_uri: str, description: str, tags: dict[str, str] | None = None) -> str:
    """Register a logged model as a new version of model `name`, with a description; returns the version."""
    import mlflow

    client = mlflow.MlflowClient()
    version = mlflow.register_model(model_uri, name, tags=tags).version  # creates the model if it is new
    client.update_registered_model(name, description="semrl: one version per training run (task, method, seed); "
                                   "alias `champion` = the best seed by the task's primary metric")
    client.update_model_version(name, version, description=description)
    return version


def model_version_of(name: str, run_id: str) -> str | None:
    """The newest registered version of model `name` that run `run_id` produced, if any."""
    import mlflow

    try:
        found = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:
        return None
    return max((v.version for v in found), key=int, default=None)
