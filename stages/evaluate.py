"""DVC stage `evaluate@<task>`: every variant x seed on the test split and CMRC 2018 dev -> reports/eval/."""
import sys

from semrl.cli import app

if __name__ == "__main__":
    app(["evaluate", *sys.argv[1:]])
