"""Flow steps as processes that start warm: a fork server imports the ML stack once per flow, and each step
(`semrl train ...`) runs in a fresh process forked from it.

A step still gets a process of its own, as with `python -m semrl.cli` (crash isolation, no shared torch,
accelerate or MLflow state, an exit code: negative when killed by a signal, so Prefect's retry rule is
unchanged), but it no longer pays the ~15 s import of torch, transformers, TRL, peft, datasets, MLflow and
sentence-transformers on this 2-core machine: the default tiny run has 18 training steps. The server
imports only; it never runs a torch op or touches CUDA, so forking it is safe (no OpenMP pool, no CUDA
context to inherit).
"""
from __future__ import annotations

import multiprocessing
import os
import threading

# What `semrl train` imports, heaviest first; a module that is missing is skipped by the server. Not
# semrl.cli: a flow started as `python -m semrl.cli` has it as the main module, which each child re-runs.
PRELOAD = [
    "torch", "transformers", "datasets", "peft", "mlflow", "sentence_transformers",
    "trl.trainer.sft_trainer", "trl.trainer.grpo_trainer",
    "semrl.training.run", "semrl.training.rewards", "semrl.training.trajectory",
    "semrl.evaluation.metrics",
]

_lock = threading.Lock()
_context = None


def context():
    """The fork-server context, configured once per process (its server starts with the first step)."""
    global _context
    with _lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            _context = ctx
        return _context


def _main(args: list[str], env: dict[str, str]) -> None:
    # The server's environment is the flow's at its start; each step gets the flow's current one plus its own.
    os.environ.clear()
    os.environ.update(env)
    from semrl.cli import app

    app(args, prog_name="semrl")  # exits: SystemExit carries the command's status


def run_cli(args: list[str], env: dict[str, str]) -> int:
    """Run `semrl <args>` in a fresh process with this environment; its exit code (-N: killed by signal N)."""
    proc = context().Process(target=_main, args=(list(args), dict(env)), name="semrl " + " ".join(args[:5]))
    proc.start()
    proc.join()
    return proc.exitcode
