"""DVC stage `train@<task>`: the Prefect flow for one task — every seed's cold start, then strong SFT and GRPO
(and enabled ablations) as concurrent siblings — into models/<task>/{coldstart,sft,grpo}/; a branch whose inputs
are unchanged is reused (`--task mt`)."""
import sys

from semrl.cli import app

if __name__ == "__main__":
    app(["flow", "--prune", *sys.argv[1:]])
