"""Flow steps start warm: each runs in a process of its own, forked from a server that imported the ML stack
once, and reports its exit status as a fresh `python -m semrl.cli` would (Prefect's retry rule reads it)."""
import json

from conftest import REPO, run

SCRIPT = '''
import json, os, signal, sys
from semrl.ops import steps

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
    codes["where"] = steps.run_cli(["where"], dict(os.environ))
    codes["bad_method"] = steps.run_cli(["train", "--method", "no_such_method", "--params", "params.yaml"],
                                        dict(os.environ))
    codes["bad_command"] = steps.run_cli(["no-such-command"], dict(os.environ))
    print(json.dumps(codes))
'''


def test_steps_fork_warm_and_report_exit_codes(tmp_path):
    script = tmp_path / "steps_probe.py"
    script.write_text(SCRIPT)
    proc = run(["python", str(script)], REPO)
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes["preloaded"] == 0          # the step's process starts with torch, transformers, TRL imported
    assert codes["killed"] == -9            # killed by a signal: negative, as subprocess reports it (retried)
    assert codes["where"] == 0
    assert codes["bad_method"] == 1         # a user error: `error:` line, exit 1 (not retried)
    assert codes["bad_command"] == 2        # the CLI's usage error
    assert "unknown method" in proc.stderr.lower() or "no_such_method" in proc.stderr
