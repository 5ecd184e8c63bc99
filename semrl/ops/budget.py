"""What a profile will cost before it runs: device-hours per stage and disk, from the profile's own counts
(rows, steps, generations, token budgets) and stated throughput assumptions (`check.budget`). Printed by
`semrl check`; the tokens are counted, the seconds are only as good as the throughput they are divided by
(bench/gpu_smoke.sh measures yours)."""
from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path

from semrl.core.config import Config
from semrl.core.methods import COLDSTART, Method, methods


@dataclass
class Work:
    """Tokens of one kind of pass; hours follow from the throughput."""

    train: float = 0.0  # forward + backward
    forward: float = 0.0  # forward only
    generate: float = 0.0  # decoded by transformers' generate
    vllm: float = 0.0  # decoded by vLLM

    def __add__(self, other: "Work") -> "Work":
        return Work(self.train + other.train, self.forward + other.forward, self.generate + other.generate,
                    self.vllm + other.vllm)

    def __mul__(self, k: float) -> "Work":
        return Work(self.train * k, self.forward * k, self.generate * k, self.vllm * k)

    def hours(self, cfg: Config) -> float:
        tp = cfg.check.budget.throughput
        seconds = (self.train / tp.train_tokens_per_s + self.forward / tp.forward_tokens_per_s
                   + self.generate / tp.generate_tokens_per_s + self.vllm / tp.vllm_generate_tokens_per_s)
        return seconds * (1 + tp.overhead) / 3600


@dataclass
class Line:
    stage: str
    runs: int  # how many times it runs (seeds x tasks x methods)
    work: Work  # of all its runs together
    detail: str


def rows(cfg: Config, task: str) -> tuple[dict[str, int], str]:
    """A task's split sizes: the prepared data's where `prepare` has run, else check.budget.rows (stated)."""
    from semrl.core.tasks import split_sizes

    sizes = split_sizes(cfg, task)
    if sizes is not None:
        return sizes, "prepared"
    stated = cfg.check.budget.rows.get(task)
    if stated is None:
        return {"train": 0, "dev": 0, "test": 0}, "unknown (not prepared, no check.budget.rows)"
    return {"train": 0, "dev": 0, "test": 0, **stated}, "check.budget.rows"


def examples(hp, batch: int, available: int) -> int:
    """Examples (GRPO: prompts) a stage trains on: max_steps x its global batch when capped (max_steps
    overrides the epochs, as in transformers' Trainer), else its epochs over what it has."""
    if hp.max_steps > 0:
        return hp.max_steps * batch * hp.grad_accum
    return int(hp.epochs * available)


def sft_work(cfg: Config, n: int) -> Work:
    t, fill = cfg.train, cfg.check.budget.length_fill
    return Work(train=n * (t.max_input_tokens + cfg.check.memory.prompt_overhead_tokens + t.max_target_tokens) * fill)


def generation_work(cfg: Config, prompts: int, new_tokens: int, input_tokens: int | None = None, vllm=False) -> Work:
    """Prefill and decoding of `prompts` greedy or sampled generations."""
    fill = cfg.check.budget.length_fill
    prompt = (cfg.train.max_input_tokens if input_tokens is None else input_tokens) + cfg.check.memory.prompt_overhead_tokens
    decoded = prompts * new_tokens * fill
    return Work(forward=prompts * prompt * fill, **({"vllm": decoded} if vllm else {"generate": decoded}))


def grpo_work(cfg: Config, method: Method, prompts: int) -> Work:
    """Rollouts (G completions per prompt), the reward embedder over them, the reference pass (beta > 0)
    and the policy's update over prompt + completion."""
    t, g, b = cfg.train, method.hparams, cfg.check.budget
    completions = prompts * g.num_generations
    seq = (t.max_input_tokens + cfg.check.memory.prompt_overhead_tokens + t.completion_tokens) * b.length_fill
    work = generation_work(cfg, completions, t.completion_tokens, vllm=g.vllm != "off")
    work += Work(forward=completions * t.completion_tokens * b.length_fill * b.reward_embedder_cost)
    if g.beta > 0:
        work += Work(forward=completions * seq)
    return work + Work(train=completions * seq)


def evaluation_work(cfg: Config, test_rows: int) -> Work:
    """One model's evaluation: the task's test split, CMRC, the LM and skill probes, the judge."""
    e, b = cfg.eval, cfg.check.budget
    n = min(e.test_samples, test_rows)
    work = generation_work(cfg, n, e.max_new_tokens)
    if e.judge.kind == "local":
        work += Work(forward=n * (cfg.train.max_input_tokens + e.max_new_tokens) * b.length_fill * b.judge_cost)
    cmrc = min(e.cmrc_samples, 3219)  # CMRC 2018's dev questions
    if e.cmrc_generate:
        work += generation_work(cfg, cmrc, e.cmrc_max_new_tokens, input_tokens=e.cmrc_max_context_tokens)
    else:  # span scoring: one forward over the context
        work += Work(forward=cmrc * e.cmrc_max_context_tokens * b.length_fill)
    probe_tokens = cfg.train.max_input_tokens + cfg.train.max_target_tokens
    return work + Work(forward=(e.lm_probe_samples + e.skill_samples) * probe_tokens * b.length_fill)


def trajectory_work(cfg: Config, steps: int, sources: int = 2) -> Work:
    """The branches' trajectory points: dev decoding and the LM probe every `every` steps, plus step 0 and
    the last."""
    tr = cfg.train.trajectory
    if not tr.every:
        return Work()
    points = steps // tr.every + 2
    probe = Work(forward=tr.probe_samples * (cfg.train.max_input_tokens + cfg.train.max_target_tokens)
                 * cfg.check.budget.length_fill)
    return (generation_work(cfg, tr.dev_samples * sources, cfg.eval.max_new_tokens) + probe) * points


def global_steps(hp, batch: int, n: int) -> int:
    return max(1, -(-n // (batch * hp.grad_accum)))


def estimate(cfg: Config) -> tuple[list[Line], list[str]]:
    """Lines of device work per stage, and the rows each task was counted with (and where they came from)."""
    t, found = cfg.train, methods(cfg)
    seeds, lines, assumed = len(t.seeds), [], []
    if not cfg.base.pretrained:
        bt = cfg.base.train
        lines.append(Line("base (pretraining)", 1, Work(train=bt.steps * bt.batch_size * bt.seq_len),
                          f"{bt.steps:,} steps x {bt.batch_size} x {bt.seq_len} tokens"))
    per_stage: dict[str, Line] = {}

    def add(stage: str, work: Work, detail: str, runs: int = 1) -> None:
        line = per_stage.setdefault(stage, Line(stage, 0, Work(), ""))
        line.runs += runs
        line.work += work
        if detail not in line.detail.split("; "):  # the reward ablations: one line, one detail
            line.detail = "; ".join(filter(None, [line.detail, detail]))

    for task in t.tasks:
        sizes, source = rows(cfg, task)
        assumed.append(f"{task}: train {sizes['train']:,}, test {sizes['test']:,} rows ({source})")
        cold = found[COLDSTART]
        cold_n = examples(cold.hparams, cold.hparams.batch_size, min(t.coldstart.samples, sizes["train"]))
        gate = t.coldstart.gate
        cold_work = sft_work(cfg, cold_n)
        if gate.enabled:  # checks to the cap: an upper bound (a passing check stops it earlier)
            checks = global_steps(cold.hparams, cold.hparams.batch_size, cold_n) // gate.every
            cold_work += generation_work(cfg, checks * gate.dev_samples * 2, cfg.eval.max_new_tokens)
        add("cold start", cold_work * seeds, f"{task} {cold_n:,} examples per run", seeds)
        remaining = max(0, sizes["train"] - t.coldstart.samples)
        for m in found.values():
            if not m.is_branch:
                continue
            if m.trainer == "sft":
                n = examples(m.hparams, m.hparams.batch_size, remaining)
                work = sft_work(cfg, n) + trajectory_work(cfg, global_steps(m.hparams, m.hparams.batch_size, n))
                add(m.title, work * seeds, f"{task} {n:,} examples per run", seeds)
            else:
                g = m.hparams
                n = examples(g, g.prompts_per_step, remaining)
                work = grpo_work(cfg, m, n) + trajectory_work(cfg, global_steps(g, g.prompts_per_step, n))
                stage = "GRPO" if not m.ablation else "GRPO reward ablations"
                add(stage, work * seeds, f"{task} {n:,} prompts x {g.num_generations} completions per run", seeds)
        if any(m.trainer == "grpo" and m.is_branch for m in found.values()) and cfg.rewards.tau == "auto":
            add("tau calibration", generation_work(cfg, cfg.rewards.tau_dev_samples, t.completion_tokens) * seeds,
                f"{task} {cfg.rewards.tau_dev_samples} dev samples per run", seeds)
        evaluated = 2 + sum(m.is_branch for m in found.values())  # base, cold start, branches
        add("evaluation", evaluation_work(cfg, sizes["test"]) * (evaluated * seeds),
            f"{task} {evaluated} models per seed, {min(cfg.eval.test_samples, sizes['test']):,} test rows each",
            evaluated * seeds)
    tr = cfg.transfer
    if tr.enabled and tr.source_task in t.tasks:
        target, _ = rows(cfg, tr.target_task)
        n = int(tr.samples * tr.epochs)
        work = (sft_work(cfg, n) + evaluation_work(cfg, target["test"])) * (len(tr.sources) * seeds)
        add("transfer", work, f"{len(tr.sources)} sources x {n:,} examples, then evaluated", len(tr.sources) * seeds)
    return lines + list(per_stage.values()), assumed


def model_count(cfg: Config) -> int:
    """Trained models kept as DVC outputs: per task and seed the cold start and each branch, plus the
    transfer models."""
    found, t = methods(cfg), cfg.train
    per = 1 + sum(m.is_branch for m in found.values())
    transfer = len(cfg.transfer.sources) if cfg.transfer.enabled and cfg.transfer.source_task in t.tasks else 0
    return len(t.tasks) * len(t.seeds) * per + len(t.seeds) * transfer


def cache_copies(root: Path = Path(".")) -> bool:
    """Whether DVC's cache holds a second copy of each output (cache.type unset or starting with copy/
    reflink on a filesystem without reflinks: copies) rather than links to one."""
    parser = configparser.ConfigParser()
    parser.read([root / ".dvc" / "config", root / ".dvc" / "config.local"])
    kind = parser.get("cache", "type", fallback="") if parser.has_section("cache") else ""
    return not kind or kind.split(",")[0].strip() in ("copy", "reflink")


def disk_gib(cfg: Config, n_params: int, trainable: int) -> dict[str, float]:
    """Weights kept: each trained model merged (every weight, in the profile's dtype), DVC's cache copy, and
    the training checkpoints kept for resuming (save_total_limit 2, each the trainable weights — an fp32
    adapter under LoRA — and Adam's two fp32 moments)."""
    gib = 2 ** 30
    bytes_w = 2 if cfg.train.bf16 else 4
    model = n_params * bytes_w / gib
    models = model_count(cfg)
    out = {"model_gib": model, "models": models, "outputs_gib": models * model,
           "dvc_cache_gib": models * model if cache_copies() else 0.0}
    weights = trainable * 4 if trainable < n_params else n_params * bytes_w
    out["checkpoints_gib"] = 2 * (weights + trainable * 8) / gib * models
    out["total_gib"] = out["outputs_gib"] + out["dvc_cache_gib"] + out["checkpoints_gib"]
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}


def report(cfg: Config, n_params: int, trainable: int) -> list[str]:
    """The estimate as `semrl check` prints it: one line per stage, the total, disk, and what it assumed."""
    lines, assumed = estimate(cfg)
    tp = cfg.check.budget.throughput
    total = sum(line.work.hours(cfg) for line in lines)
    out = [f"time estimate (device-hours on {tp.device}; tokens/s train {tp.train_tokens_per_s:g}, forward "
           f"{tp.forward_tokens_per_s:g}, generate {tp.generate_tokens_per_s:g}, vLLM {tp.vllm_generate_tokens_per_s:g}, "
           f"+{tp.overhead:.0%} overhead: check.budget.throughput):"]
    for line in lines:
        h = line.work.hours(cfg)
        out.append(f"    {line.stage}: {h:,.3g} h ({h / total:.0%}) over {line.runs} run(s); {line.detail}" if total else
                   f"    {line.stage}: 0 h")
    out.append(f"    total: {total:,.4g} device-hours = {total / 24:,.3g} device-days")
    d = disk_gib(cfg, n_params, trainable)
    out.append(f"disk estimate (GiB): {d['models']} trained models x {d['model_gib']} = {d['outputs_gib']} as DVC "
               f"outputs, + {d['dvc_cache_gib']} DVC cache copy, + {d['checkpoints_gib']} checkpoints = {d['total_gib']}")
    out += [f"{'warning: ' if 'unknown' in a else ''}budget rows {a}" for a in assumed]
    return out
