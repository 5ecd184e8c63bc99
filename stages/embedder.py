"""DVC stage `embedder`: zh-bo train pairs -> models/embedder/ (reward) and models/eval_embedder/ (evaluation)."""
import sys

from semrl.cli import app

if __name__ == "__main__":
    app(["embedder", *sys.argv[1:]])
