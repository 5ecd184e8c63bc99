"""DVC stage `train@<task>`: runs the Prefect flow for one task, all seeds -> models/<task>/."""
import sys

from semrl.cli import app

if __name__ == "__main__":
    app(["flow", *sys.argv[1:]])
