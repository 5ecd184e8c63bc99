"""DVC stage `prepare`: data/raw/ -> data/prepared/ (normalised splits, quarantine.jsonl, stats.json)."""
import sys

from semrl.cli import app

if __name__ == "__main__":
    app(["prepare", *sys.argv[1:]])
