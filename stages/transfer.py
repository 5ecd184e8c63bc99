"""DVC stage `transfer`: few-shot transfer from the source task's SFT and GRPO models -> models/transfer/."""
import sys

from semrl.cli import app

if __name__ == "__main__":
    app(["transfer", *sys.argv[1:]])
