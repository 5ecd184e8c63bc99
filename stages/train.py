"""DVC stages `coldstart@<task>`, `sft@<task>`, `grpo@<task>`: one training stage of the Prefect flow for
one task, every seed -> models/<task>/<stage>/ (`--task mt --stage grpo`)."""
import sys

from semrl.cli import app

if __name__ == "__main__":
    app(["flow", *sys.argv[1:]])
