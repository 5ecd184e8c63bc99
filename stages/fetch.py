"""DVC stage `fetch`: data/sources.tsv -> data/raw/ (sha256-verified; offline mirror via SEMRL_DATA_MIRROR)."""
import sys

from semrl.cli import app

if __name__ == "__main__":
    app(["fetch", *sys.argv[1:]])
