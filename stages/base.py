"""DVC stage `base`: data/prepared/lm -> models/base/ (tiny: tokenizer + Qwen3 pretrained from scratch)."""
import sys

from semrl.cli import app

if __name__ == "__main__":
    app(["base", *sys.argv[1:]])
