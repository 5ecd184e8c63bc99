"""DVC stage `report`: reports/eval/*.json -> reports/alignment_tax.{md,csv}, metrics.json, plots/."""
import sys

from semrl.cli import app

if __name__ == "__main__":
    app(["report", *sys.argv[1:]])
