"""Prefect entry point for the `expansion` flow (cold start -> {strong SFT || GRPO}); logic in semrl/ops/flows.py.

    python flows/expansion.py [--task mt] [--seed 0]      # same as `semrl flow`
"""
import sys

from semrl.ops.flows import expansion  # noqa: F401  (the deployment entry point: flows/expansion.py:expansion)

if __name__ == "__main__":
    from semrl.cli import app

    app(["flow", *sys.argv[1:]])
