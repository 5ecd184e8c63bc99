"""Flow steps start warm: each runs in a process of its own, forked from a server that imported the ML stack
once, and reports its exit status as a fresh `python -m semrl.cli` would (Prefect's retry rule reads it). A step is
a plain library function (semrl.ops.flows.STEPS), not the CLI."""
import json
import signal
import subprocess
import sys
import time

from conftest import REPO, child_env, run

SCRIPT = '''
import json, os, signal, sys
from semrl.ops import steps
from semrl.ops.flows import STEPS

def preloaded():
    import sys
    sys.exit(0 if all(m in sys.modules for m in steps.PRELOAD if m != "sentence_transformers") else 3)

def killed():
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    ctx = steps.context()
    codes = {}
    for name, target in [("preloaded", preloaded), ("killed", killed)]:
        p = ctx.Process(target=target)
        p.start()
        p.join()
        codes[name] = p.exitcode
    codes["fine"] = steps.run_call("semrl.core.config:load_config", {"path": "params.yaml"}, dict(os.environ))
    codes["bad_method"] = steps.run_call(STEPS["train"], {"params": "params.yaml", "task": "mt",
                                                          "method": "no_such_method", "seed": 0}, dict(os.environ))
    codes["bad_target"] = steps.run_call("semrl.no_such_module:step", {}, dict(os.environ))
    codes["crashed"] = steps.run_call("semrl.core.io:read_jsonl", {"path": "no/such/file.jsonl"}, dict(os.environ))
    print(json.dumps(codes))
'''


def test_steps_fork_warm_and_report_exit_codes(tmp_path):
    script = tmp_path / "steps_probe.py"
    script.write_text(SCRIPT)
    proc = run(["python", str(script)], REPO)
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes["preloaded"] == 0          # the step's process starts with torch, transformers, TRL imported
    assert codes["killed"] == -9            # killed by a signal: negative, as subprocess reports it (retried)
    assert codes["fine"] == 0               # a plain function, not the CLI
    assert codes["bad_method"] == 1         # a user error: `error:` line, exit 1 (not retried)
    assert codes["bad_target"] == 1         # a step that does not exist: named in an `error:` line
    assert codes["crashed"] == 1            # an unexpected exception: its traceback in the log, exit 1
    assert "error: unknown method 'no_such_method'" in proc.stderr
    assert "error: 'semrl.no_such_module:step': cannot import" in proc.stderr


def test_supervise_forwards_lines_and_stops_a_step_at_its_timeout(tmp_path, capfdbinary):
    """A step's output reaches the terminal unchanged and the run logs line by line (a progress bar redrawn
    with carriage returns once, as its last state); past its timeout the step is stopped, not left running."""
    from semrl.ops.steps import TIMED_OUT, supervise

    log = tmp_path / "step.log"
    script = ("import sys, time\nprint('first line', flush=True)\nsys.stderr.write('10%\\r50%\\r100%\\n')\n"
              "sys.stdout.flush(); sys.stderr.flush(); time.sleep(120)")
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT)
    lines = []
    t0 = time.monotonic()
    code = supervise(lambda: proc.poll() is None, lambda: proc.returncode, proc.pid, log, lines.append, 3.0)
    assert code == TIMED_OUT and proc.wait(timeout=5) == -signal.SIGTERM and time.monotonic() - t0 < 30
    assert lines[:2] == ["first line", "100%"] and "timed out after 3 s" in lines[2]
    assert b"10%\r50%\r100%" in capfdbinary.readouterr().out


def test_supervise_returns_the_exit_code_and_only_this_attempts_output(tmp_path):
    from semrl.ops.steps import supervise

    log = tmp_path / "step.log"
    log.write_text("an earlier attempt\n")
    offset = log.stat().st_size
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", "print('again', end='')\nraise SystemExit(3)"], stdout=out)
    lines = []
    assert supervise(lambda: proc.poll() is None, lambda: proc.returncode, proc.pid, log, lines.append, None,
                     offset) == 3
    assert lines == ["again"]  # the last line had no newline; the earlier attempt's is not repeated



def test_steps_started_and_polled_from_many_threads_keep_their_exit_codes():
    """Flow branches start and finish steps at once, each polling its own: a start in one thread must not
    eat another step's exit code (multiprocessing then reports 255: 17–22 of these 1,200 without the lock)."""
    proc = run([sys.executable, "-c", THREADS], REPO)
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes == {"0": 1200}


THREADS = '''
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from semrl.ops import steps

def one(_):
    proc = steps.context().Process(target=sys.exit, args=(0,))
    steps.start(proc)
    while steps.alive(proc):
        time.sleep(0.0005)
    proc.join()
    return proc.exitcode

if __name__ == "__main__":
    steps.context().set_forkserver_preload([])
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(1200)))
    print(json.dumps({str(c): codes.count(c) for c in set(codes)}))
'''


def test_a_flow_that_gives_up_on_its_prefect_server_keeps_its_record_for_mark_crashed(tmp_path):
    """The Prefect server stops answering: the watcher stops the steps, and a stopped step makes the flow's
    body raise at once. The body's unwinding must not remove the flow's record while the watcher still
    exits: without it the next `semrl status` cannot mark the run (Running on the server) Crashed. The step
    here takes a second to end after SIGTERM, as a training step does, so the body unwinds first."""
    proc = subprocess.run([sys.executable, "-c", GIVE_UP], cwd=tmp_path, env=child_env(), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "has not answered for 1 s" in proc.stderr and "1 running step(s) stopped" in proc.stderr, proc.stderr
    assert "body unwound" in proc.stdout, proc.stdout  # the race this guards against did happen
    [record] = (tmp_path / ".semrl" / "run" / "flows").glob("*.json")
    assert json.loads(record.read_text())["flow_run_id"] == "run-that-died"


GIVE_UP = '''
import http.server, os, pathlib, threading, time
from semrl.ops import liveness, steps


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{server.server_address[1]}/api"
try:
    with liveness.watch_prefect_api(1, "run-that-died"):
        step = threading.Thread(target=steps.run_command, args=(
            ["bash", "-c", "trap 'sleep 1; exit 143' TERM; sleep 120 & wait"], dict(os.environ),
            pathlib.Path("step.log")), daemon=True)
        step.start()
        server.shutdown()
        server.server_close()
        steps.STOPPING.wait()
        print("body unwound", flush=True)
        raise RuntimeError("a step was stopped")
except RuntimeError:
    time.sleep(60)  # as Prefect's engine, retrying to report the failure to the dead server, until the exit
'''


def test_a_step_refuses_to_run_when_its_fork_server_had_started_cuda(monkeypatch):
    """On a GPU box a step picks its devices (CUDA_VISIBLE_DEVICES) after the fork: only possible when the
    server never initialised CUDA. It has not here (the preload imports only); were it to, the step stops,
    naming the preload, instead of landing on the server's GPU."""
    import pytest
    import torch

    from semrl.ops import steps

    assert not torch.cuda.is_initialized()
    steps.require_cuda_uninitialised()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(SystemExit, match="CUDA was initialised in the fork server.*trl.trainer.grpo_trainer"):
        steps.require_cuda_uninitialised()
