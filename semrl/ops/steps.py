"""Flow steps as processes that start warm: a fork server imports the ML stack once per flow, and each step
— a plain library function such as semrl.training.run:step, not the CLI — runs in a fresh process forked
from it (`python -m semrl.ops.steps <module:function> <JSON kwargs>` runs one the same way without the
server: what `accelerate launch` starts on several GPUs).

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
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

# What a training step imports, heaviest first; a module that is missing is skipped by the server. Not
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


def warm_up() -> None:
    """Start the fork server now rather than with the first step: it imports PRELOAD in a process of its
    own while the flow starts its Prefect server and MLflow run (~5 s per DVC training stage here), so the
    two overlap. Its environment is this process's, as at a first step (every step gets its own anyway)."""
    from multiprocessing import forkserver

    context()
    forkserver.ensure_running()


TIMED_OUT = 124  # the exit code of a step stopped at its timeout (as coreutils `timeout`): not retried
KILL_GRACE_S = 30  # after SIGTERM (the step ends its MLflow run KILLED), SIGKILL

# The step processes running now (pid -> whether it leads a process group of its own), so a flow that is
# stopped (SIGTERM, Ctrl-C) stops them too instead of leaving them running as orphans.
_running: dict[int, bool] = {}
STOPPING = threading.Event()  # set once the flow stops: no new step starts, none is retried


def stop_all(grace_s: float = KILL_GRACE_S) -> int:
    """Stop every running step: SIGTERM (each ends its MLflow run KILLED), SIGKILL after `grace_s`. Returns
    how many there were."""
    import psutil

    STOPPING.set()
    pids = dict(_running)
    for pid, group in pids.items():
        _signal(pid, signal.SIGTERM, group)
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        _signal(p.pid, signal.SIGKILL, pids[p.pid])
    return len(pids)


def call(target: str, kwargs: dict) -> None:
    """Run one step in this process: `target` ("package.module:function") with `kwargs`, as a step of the
    flow whose PID is in FLOW_PID_ENV (killed with SIGKILL, the step stops too: its run KILLED, no orphan);
    user-facing errors as `error:` lines and an exit status (semrl.core.entry.run_step). Exits."""
    from semrl.core.entry import run_step
    from semrl.core.io import import_dotted
    from semrl.ops.liveness import watch_flow_process

    watch_flow_process()
    function = run_step(lambda: import_dotted(target))
    run_step(lambda: function(**kwargs))
    sys.exit(0)


def require_cuda_uninitialised() -> None:
    """A forked step may choose its GPUs (CUDA_VISIBLE_DEVICES) only if the process it was forked from never
    initialised CUDA: a child inherits a parent's CUDA context broken, and the variable is read once, at
    initialisation. The server preloads imports only; an import that started CUDA would fail here, by name,
    rather than as a hang or a step on the wrong GPU."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise SystemExit("semrl.ops.steps: CUDA was initialised in the fork server before this step was forked "
                         f"(preloaded: {', '.join(PRELOAD)}); a step forked from it cannot choose its GPUs. "
                         "Remove the import that starts CUDA from PRELOAD.")


def _main(target: str, kwargs: dict, env: dict[str, str], log_path: str | None = None) -> None:
    require_cuda_uninitialised()
    # The server's environment is the flow's at its start; each step gets the flow's current one plus its own.
    os.environ.clear()
    os.environ.update(env)
    if log_path:  # stdout and stderr (tracebacks, progress bars) into the step's log file, which the flow tails
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
    call(target, kwargs)  # exits: SystemExit carries the step's status


class Tail:
    """Follows a step's log file: every new byte goes to this process's stdout unchanged (the terminal of
    whoever runs the flow, or DVC's), and every finished line to `on_line` (the Prefect run's logs). A line
    redrawn with carriage returns (a progress bar) counts once, as its last state."""

    def __init__(self, path: Path, on_line: Callable[[str], None] | None, offset: int = 0):
        self.file = path.open("rb")
        self.file.seek(offset)  # a retried step appends to the same file: only this attempt's output
        self.on_line = on_line
        self.partial = b""

    def pump(self) -> None:
        data = self.file.read()
        if not data:
            return
        out = getattr(sys.stdout, "buffer", None)
        if out is not None:
            out.write(data)
            out.flush()
        *lines, self.partial = (self.partial + data).split(b"\n")
        for raw in lines:
            self._emit(raw)

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r").rsplit("\r", 1)[-1].rstrip()
        if line and self.on_line is not None:
            self.on_line(line)

    def close(self) -> None:
        self.pump()
        if self.partial:  # a last line without a newline
            self._emit(self.partial)
            self.partial = b""
        self.file.close()


def supervise(is_alive: Callable[[], bool], exitcode: Callable[[], int | None], pid: int, log_path: Path | None,
              on_line: Callable[[str], None] | None, timeout_s: float | None, offset: int = 0,
              group: bool = False) -> int:
    """Wait for a step process while forwarding its log; past `timeout_s` stop it (SIGTERM, then SIGKILL
    after KILL_GRACE_S; `group`: its whole process group) and return TIMED_OUT. A wait here, not Prefect's
    task timeout: that cannot interrupt a blocking wait and would leave the step's process running."""
    tail = Tail(log_path, on_line, offset) if log_path else None
    start, stopping = time.monotonic(), None
    try:
        while is_alive():
            time.sleep(0.2)
            if tail:
                tail.pump()
            elapsed = time.monotonic() - start
            if timeout_s and elapsed > timeout_s and stopping is None:
                if on_line:
                    on_line(f"step timed out after {timeout_s:g} s (flow.step_timeout_s): stopping it")
                _signal(pid, signal.SIGTERM, group)
                stopping = time.monotonic()
            elif stopping is not None and time.monotonic() - stopping > KILL_GRACE_S:
                _signal(pid, signal.SIGKILL, group)
    finally:
        if tail:
            tail.close()
    return TIMED_OUT if stopping is not None else exitcode()


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except ProcessLookupError:
        pass


def run_command(command: list[str], env: dict[str, str], log_path: Path, on_line: Callable[[str], None] | None = None,
                timeout_s: float | None = None) -> int:
    """Run any command (accelerate launch, dvc) as a step: in a process group of its own, its output into
    `log_path` and forwarded (Tail), stopped as a group at `timeout_s`; its exit code."""
    import subprocess

    if STOPPING.is_set():
        return -signal.SIGTERM
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.is_file() else 0
    with log_path.open("ab") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _running[proc.pid] = True
    try:
        code = supervise(lambda: proc.poll() is None, lambda: proc.returncode, proc.pid, log_path, on_line, timeout_s,
                         offset, group=True)
        proc.wait()
    finally:
        _running.pop(proc.pid, None)
    return code


def run_call(target: str, kwargs: dict, env: dict[str, str], log_path: Path | None = None,
             on_line: Callable[[str], None] | None = None, timeout_s: float | None = None) -> int:
    """Run the step `target(**kwargs)` (call) in a fresh process forked from the server, with this
    environment; its exit code (-N: killed by signal N, TIMED_OUT: stopped at `timeout_s`). With `log_path`,
    its output goes there and is forwarded (Tail)."""
    offset = 0
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        offset = log_path.stat().st_size
    if STOPPING.is_set():
        return -signal.SIGTERM
    proc = context().Process(target=_main, args=(target, dict(kwargs), dict(env), str(log_path) if log_path else None),
                             name=f"semrl step {target} {' '.join(str(v) for v in kwargs.values())}"[:120])
    start(proc)
    _running[proc.pid] = False
    try:
        code = supervise(lambda: alive(proc), lambda: proc.exitcode, proc.pid, log_path, on_line, timeout_s, offset)
        proc.join()
    finally:
        _running.pop(proc.pid, None)
    return code


# Process.start() polls every child this process started (multiprocessing's _cleanup), from the starting
# thread. A fork-server child's exit code is read once from a pipe: a step's thread and another thread's
# start() polling the same finished child at once lets one read the code and the other see EOF, which
# multiprocessing reports as exit code 255. Starts and polls take this lock, so one of them reads it.
_children_lock = threading.Lock()


def start(proc) -> None:
    with _children_lock:
        proc.start()


def alive(proc) -> bool:
    with _children_lock:
        return proc.is_alive()


if __name__ == "__main__":  # one step without the fork server: python -m semrl.ops.steps <module:function> <JSON>
    import json

    from semrl.core.env import apply_quiet_env

    apply_quiet_env()
    call(sys.argv[1], json.loads(sys.argv[2]))
