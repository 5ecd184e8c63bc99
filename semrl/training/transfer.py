"""Few-shot transfer training: from the source task's strong-SFT and GRPO models (each seed), SFT on
`transfer.samples` target-task examples (paper: MT -> 1,000 headlines). The `transfer` stage then scores
them with `semrl.evaluation.evaluate.evaluate_transfer`."""
from __future__ import annotations

from semrl.core.config import Config
from semrl.core.methods import Method, transfer_methods
from semrl.training.run import train_one

def train_transfer(cfg: Config) -> list[tuple[Method, int]]:
    """Train every transfer method x seed into models/transfer/<target task>/ (resuming as any method)."""
    done = []
    if not cfg.transfer.enabled:
        return done
    cfg = cfg.model_copy(deep=True)
    cfg.train.torch_threads = cfg.transfer.torch_threads  # one run at a time: all the cores it may use
    for seed in cfg.train.seeds:
        for method in transfer_methods(cfg):
            train_one(cfg, cfg.transfer.target_task, method.name, seed)
            done.append((method, seed))
    return done


def step(params: str) -> dict:
    """The pipeline step `transfer` as a flow's step process and `semrl transfer` run it: fine-tune the
    source task's branches on a few target-task examples, then score them on the target's test split."""
    from semrl.core.config import load_config
    from semrl.evaluation.evaluate import evaluate_transfer

    cfg = load_config(params)
    train_transfer(cfg)
    report = evaluate_transfer(cfg)
    for r in report["results"]:
        print(f"transfer {r['method']}-s{r['seed']}: sim_reward {r['sim_reward']:.4f}, sim_eval {r['sim_eval']:.4f}")
    return report
