"""The `semrl` command: every pipeline step by name, plus helpers; DVC stages call the same functions."""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from semrl import SemrlError
from semrl.core.entry import config, run_step

app = typer.Typer(help="semrl: low-resource language expansion with semantic-reward RL, and its alignment tax.",
                  no_args_is_help=True, add_completion=False)

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="params file (run from the project root)")


PREFECT_COMMANDS = {"flow", "serve", "deploy", "worker", "status"}  # the commands that run or read flows


@app.callback()
def _use_running_servers(ctx: typer.Context) -> None:
    """Every command (and so every DVC stage) runs in the quiet environment (semrl.core.env) and logs to
    `semrl up`'s MLflow server when it runs; a command that runs flows says where its flow runs go. Nothing
    here imports flow, server-lifecycle or liveness code: those belong to the commands that use them."""
    from semrl.core.config import load_config
    from semrl.core.entry import use_running_mlflow
    from semrl.core.env import apply_quiet_env
    from semrl.core.servers import use_prefect

    apply_quiet_env()
    use_running_mlflow()
    if ctx.invoked_subcommand in PREFECT_COMMANDS and Path("params.yaml").is_file():
        try:
            cfg = load_config("params.yaml")
        except SemrlError:
            return  # the command itself reports a broken params file
        print(f"semrl: {use_prefect(cfg.servers)}", file=sys.stderr)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


@app.command()
def fetch(params: Path = PARAMS_OPTION) -> None:
    """Get the corpora listed in data/sources.tsv into data/raw/ (sha256-verified; mirror via SEMRL_DATA_MIRROR)."""
    from semrl.data import fetch as fetch_mod

    r = run_step(lambda: fetch_mod.run(config(params)))
    print(f"fetch: {r.fetched} fetched ({r.bytes / 1e6:.1f} MB), {r.up_to_date} already verified, {r.skipped} disabled")


@app.command()
def prepare(params: Path = PARAMS_OPTION) -> None:
    """Clean, normalise and split the raw corpora into data/prepared/ (quarantine + stats.json)."""
    from semrl.data import prepare as prepare_mod

    stats = run_step(lambda: prepare_mod.run(config(params)))
    print(prepare_mod.summary(stats))


@app.command()
def base(params: Path = PARAMS_OPTION) -> None:
    """Build the base causal LM into models/base/ (tiny: train tokenizer + pretrain; paper: resolve a named model)."""
    from semrl.models import base as base_mod

    metrics = run_step(lambda: base_mod.run(config(params)))
    print("base: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))


@app.command()
def embedder(params: Path = PARAMS_OPTION) -> None:
    """Build the reward embedder (models/embedder/) and the independent evaluation embedder (models/eval_embedder/)."""
    from semrl.models import embedder as embedder_mod

    metrics = run_step(lambda: embedder_mod.run(config(params)))
    for role, m in metrics.items():
        print(f"embedder {role}: " + ", ".join(f"{k} {v}" for k, v in m.items()))


@app.command()
def train(
    task: str = typer.Option("mt", help="a task defined in params `tasks` (mt, mt_bo2zh, headline)"),
    method: str = typer.Option(..., help="coldstart, sft, grpo, an enabled ablation grpo_<name>, transfer_from_<m>"),
    seed: int = typer.Option(0),
    params: Path = PARAMS_OPTION,
) -> None:
    """Train one (task, method, seed) into models/<task>/<method>/seed<k>/, resuming from its last checkpoint."""
    from semrl.training import run as train_mod

    run_step(lambda: train_mod.step(str(params), task, method, seed))


@app.command()
def flow(
    task: list[str] = typer.Option(None, help="tasks (default: train.tasks)"),
    seed: list[int] = typer.Option(None, help="seeds (default: train.seeds)"),
    prune: bool = typer.Option(False, help="first remove outputs of seeds and ablations the params no longer "
                                           "have (the DVC stage train@<task> does)"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Run the Prefect flow: cold start, then strong SFT and GRPO concurrently, for each task and seed; a
    step whose inputs are unchanged is reused, not rerun."""
    from semrl.ops.flows import configured

    import signal

    cfg = config(params)
    from semrl.core.tasks import data_problems

    # The flow checks the data too (a deployment's run starts there); here a split too small for the branches
    # fails in seconds, before Prefect's server and the fork server start.
    if problems := run_step(lambda: data_problems(cfg, task or cfg.train.tasks)[0]):
        fail(f"{params}: " + "; ".join(problems))

    def on_term(signum, frame):  # as Ctrl-C: the flow stops its steps (semrl.ops.steps.stop_all) and ends
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if cfg.flow.gpus_per_step == 1:  # the steps are forked from semrl.ops.steps' server (> 1: accelerate launch)
        from semrl.ops import steps

        steps.warm_up()

    def go():
        try:
            return configured(cfg)(tasks=task or None, seeds=seed or None, params_path=str(params), prune=prune)
        except RuntimeError as e:  # a failed branch: its own log already has the traceback
            raise SemrlError(str(e)) from None

    results = run_step(go)
    for r in results:
        print(f"flow: {r['task']}-{r['method']}-s{r['seed']}: " + ("skipped: " + r["skipped"] if "skipped" in r else
              "reused" if r["reused"] else f"{r['steps']} steps in {r['end'] - r['start']:.1f} s"))


@app.command()
def evaluate(task: str = typer.Option("mt"), params: Path = PARAMS_OPTION) -> None:
    """Evaluate base, cold start, strong SFT, GRPO (and ablations) on the task and on CMRC 2018 dev."""
    from semrl.evaluation import evaluate as evaluate_mod

    run_step(lambda: evaluate_mod.step(str(params), task))


@app.command()
def transfer(params: Path = PARAMS_OPTION) -> None:
    """Few-shot transfer: fine-tune the source task's SFT and GRPO models on a few target-task examples,
    then score them on the target task's test split."""
    from semrl.training import transfer as transfer_mod

    run_step(lambda: transfer_mod.step(str(params)))


@app.command()
def report(params: Path = PARAMS_OPTION) -> None:
    """Write the alignment-tax report (reports/), its plots and the MLflow `report` run."""
    from semrl.evaluation import report as report_mod

    run_step(lambda: report_mod.step(str(params)))


@app.command()
def up(params: Path = PARAMS_OPTION) -> None:
    """Start the local Prefect and MLflow servers (127.0.0.1, state inside the project); idempotent."""
    from semrl.core import servers as srv

    if problem := run_step(lambda: srv.exposure_problem(config(params).servers)):
        fail(problem)
    for s in srv.servers(config(params).servers, config(params).tracking):
        took = run_step(lambda: srv.start(s, Path.cwd()))
        print(f"{s.name:8} {s.url}  " + (f"started in {took:.1f} s" if took else "already running") +
              f"  (log {s.log_file})")
        if s.name == "prefect":
            _mark_crashed(s.url + "/api")


@app.command()
def down(params: Path = PARAMS_OPTION) -> None:
    """Stop the local servers started by `semrl up`."""
    from semrl.core import servers as srv

    for s in srv.servers(config(params).servers, config(params).tracking):
        print(f"{s.name:8} {srv.stop(s)[1]}")


@app.command()
def status(params: Path = PARAMS_OPTION) -> None:
    """Report the local servers (running and healthy, their UI URLs) and the deployment: its schedule, its
    work pool's workers, and why scheduled runs are Late when no worker or `semrl serve` runs them."""
    from semrl.core import servers as srv

    cfg = config(params)
    for s in srv.servers(cfg.servers, cfg.tracking):
        pid, ok = srv.pid_of(s), srv.healthy(s)
        state = "healthy" if pid and ok else ("running, not answering" if pid else "stopped")
        print(f"{s.name:8} {state:24} {s.url if pid else ''}")
        if stale := srv.stale_pid_file(s):
            print(f"{'':8} stale PID file: {stale}")
    from prefect.settings import get_current_settings

    from semrl.ops.deploy import deployment_status

    if api := get_current_settings().api.url:
        _mark_crashed(api)
    for line in run_step(lambda: deployment_status(cfg)):
        print(line)


def _mark_crashed(api_url: str) -> None:
    from semrl.ops.liveness import mark_crashed

    for line in run_step(lambda: mark_crashed(api_url)):
        print(f"{'flows':8} {line}")


@app.command()
def serve(
    params: Path = PARAMS_OPTION,
    cron: str = typer.Option(None, help="cron schedule (default: deployment.cron)"),
    name: str = typer.Option(None, help="deployment name (default: deployment.name)"),
) -> None:
    """Register the deployment `experiment/<name>` with its cron schedule and run its flow runs in this
    process (Ctrl-C stops; `semrl deploy` + `semrl worker` is the same through a work pool)."""
    from semrl.ops.deploy import require_server
    from semrl.ops.flows import experiment

    cfg = config(params)
    d = cfg.deployment
    run_step(require_server)
    experiment.serve(name=name or d.name, cron=cron or d.cron, tags=["semrl"],
                     description="the pipeline as a DVC experiment (dvc exp run --temp): cold start -> "
                                 "{strong SFT, GRPO}, evaluation and the report",
                     parameters={"tasks": d.tasks, "seeds": d.seeds, "profile": d.profile,
                                 "params_path": str(params), "evaluate": d.evaluate})


@app.command()
def deploy(
    params: Path = PARAMS_OPTION,
    cron: str = typer.Option(None, help="cron schedule (default: deployment.cron)"),
    name: str = typer.Option(None, help="deployment name (default: deployment.name)"),
) -> None:
    """Register the deployment `experiment/<name>` with its cron schedule to the process work pool
    deployment.work_pool (created if missing); `semrl worker` — here or on another machine with this
    project — runs its flow runs."""
    from semrl.ops.deploy import deploy as deploy_flow

    cfg = config(params)
    dep_id = run_step(lambda: deploy_flow(cfg, params, name, cron))
    print(f"deployment experiment/{name or cfg.deployment.name} ({dep_id}) in work pool "
          f"{cfg.deployment.work_pool}; schedule {cron or cfg.deployment.cron}; start a worker: semrl worker")


@app.command()
def worker(
    params: Path = PARAMS_OPTION,
    run_once: bool = typer.Option(False, "--run-once", help="run the flow runs due now, then exit"),
) -> None:
    """Start a Prefect process worker on deployment.work_pool: it runs the deployment's flow runs in this
    project folder (Ctrl-C stops)."""
    import os
    import subprocess

    from semrl.ops.deploy import require_server

    cfg = config(params)
    run_step(require_server)
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", cfg.deployment.work_pool,
               "--type", "process", *(["--run-once"] if run_once else [])]
    print("semrl: " + " ".join(command[1:]), file=sys.stderr)
    raise SystemExit(subprocess.call(command, env=dict(os.environ)))


@app.command()
def check(
    profile: str = typer.Argument(None, help="a profile in configs/ (default: params.yaml as it is)"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Validate a profile before any download: batch shapes, LoRA targets, rewards, sources, memory."""
    from semrl.core.config import load_config
    from semrl.ops.check import check as check_profile

    try:
        cfg = load_config(params, profile)
    except SemrlError as e:
        for line in str(e).splitlines()[:-1]:
            print(f"problem: {line}")
        print(str(e).splitlines()[-1])
        raise SystemExit(1)
    problems, facts = run_step(lambda: check_profile(cfg))
    for fact in facts:
        print(f"  {fact}")
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{len(problems)} problem(s)")
    if problems:
        raise SystemExit(1)


@app.command()
def profile(
    name: str = typer.Argument(..., help="configs/<name>.yaml"),
    run: bool = typer.Option(False, "--run", help="run the pipeline with it as a DVC experiment (`dvc exp run -S ...`)"),
    temp: bool = typer.Option(False, "--temp", help="with --run: in a temporary workspace (yours stays as it is)"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Put configs/<name>.yaml into params.yaml through DVC's `-S` editor (values change in place, comments
    stay; undo with `git checkout params.yaml`), or with --run hand it to `dvc exp run` as `-S` overrides:
    the run is an experiment of its own in `dvc exp show`."""
    import subprocess
    import time

    from semrl.core.config import apply_overlay, overlay_overrides, profile_overlay

    overlay = run_step(lambda: profile_overlay(name))
    if not run:
        merged = run_step(lambda: apply_overlay(params, overlay))
        print(f"{params}: profile {merged.profile} applied from {overlay}")
        return
    config(params)  # a broken params file fails here, not inside DVC
    overrides = [a for o in run_step(lambda: overlay_overrides(params, overlay)) for a in ("-S", o)]
    command = [sys.executable, "-m", "dvc", "exp", "run", "-n", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
               *(["--temp"] if temp else []), *overrides]
    print("semrl: " + " ".join(command[1:3] + command[3:7]) + f" ... ({len(overrides) // 2} overrides from {overlay})",
          file=sys.stderr)
    raise SystemExit(subprocess.call(command))


@app.command()
def sources(
    manifest: Path = typer.Argument(..., help="a mirror's MANIFEST.tsv"),
    out: Path = typer.Option(Path("data/sources.tsv"), help="source list to write"),
) -> None:
    """Derive data/sources.tsv from a mirror manifest (URLs, hashes, licences) plus the CLDR pairs entry."""
    import hashlib

    from semrl.data.cldr import babel_version, cldr_pairs_tsv
    from semrl.data.sources import Source, sources_from_manifest, write_sources

    def derive():
        rows = sources_from_manifest(manifest)
        data = cldr_pairs_tsv()
        rows.append(Source("cldr/bo_zh_pairs.tsv", "cldr", "cldr", f"babel:{babel_version()}",
                           hashlib.sha256(data).hexdigest(), len(data), "Unicode-3.0"))
        write_sources(out, rows)
        return rows

    rows = run_step(derive)
    print(f"wrote {out}: {len(rows)} files")


@app.command()
def where() -> None:
    """Print where the pipeline's results are."""
    for path, what in [
        ("data/raw/", "fetched corpora (sha256-verified)"),
        ("data/prepared/", "cleaned splits: mt/, headline/, lm/, general/"),
        ("data/prepared/quarantine.jsonl", "every record not kept, with file, line and reason"),
        ("data/prepared/stats.json", "counts per output, split, source and quarantine reason (`dvc metrics show`)"),
        ("models/base/", "base causal LM + tokenizer (AutoModelForCausalLM / AutoTokenizer)"),
        ("models/embedder/", "reward embedder (sentence-transformers)"),
        ("models/eval_embedder/", "independent evaluation embedder (sentence-transformers)"),
        ("metrics/", "base.json (perplexity, size), embedder.json (retrieval top-1)"),
        ("models/mt/", "trained models: coldstart/, sft/, grpo/ (outputs of the DVC stage train@mt): seed<k>/{model,adapter}/"),
        ("reports/alignment_tax.md", "the alignment-tax report (+ .csv, metrics.json, plots/, curves/)"),
        ("mlflow.db", "MLflow runs: `semrl up`, then http://127.0.0.1:5000 (Prefect UI on :4200)"),
    ]:
        mark = "ok " if Path(path).exists() else "-- "
        print(f"{mark}{path:32} {what}")


if __name__ == "__main__":
    app()
