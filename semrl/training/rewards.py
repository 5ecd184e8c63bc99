"""GRPO reward functions (TRL signature `f(prompts, completions, **columns) -> list[float]`) and the registry
that builds them from `params.yaml`.

The paper's reward is R = 1.5 * R_sim + 1.0 * R_lang: R_sim = max(0, (s - tau) / (1 - tau)) with s the
cosine similarity of completion and reference under a frozen sentence embedder, and R_lang = 1 when the
completion is entirely in the target script. Each component is its own function so that TRL weights
them (`reward_weights`) and logs each one separately (`rewards/<name>/mean`).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import numpy as np

from semrl import SemrlError
from semrl.core.config import Config, RewardComponent
from semrl.core.io import import_dotted
from semrl.core.text import in_script, script_counts
from semrl.models.chat import strip_thinking
from semrl.models.embedder import Similarity

RewardFunc = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """The completion's text without a leading thinking block (semrl.models.chat.strip_thinking): TRL
    passes plain strings, or for conversational data a list of messages (the last is ours)."""
    if isinstance(completion, str):
        return strip_thinking(completion)
    if isinstance(completion, dict):
        return strip_thinking(str(completion.get("content", "")))
    if isinstance(completion, list) and completion:
        return completion_text(completion[-1])
    return ""


def rescale(s: float, tau: float) -> float:
    """R_sim = max(0, (s - tau) / (1 - tau)): zero up to the adequacy threshold tau, 1 at s = 1."""
    return max(0.0, (s - tau) / (1.0 - tau))


def tau_from_similarities(similarities: list[float], quantile: float) -> float:
    """tau = auto: the given quantile of the cold-start model's similarity on dev, i.e. the level a
    cold-start output reaches (the paper's "minimal semantic adequacy level from the cold-start phase").
    Clipped at 0: a cold start below chance similarity gives no reason to reward negative cosines."""
    if not similarities:
        raise SemrlError("tau auto: no cold-start similarities to calibrate from")
    return max(0.0, float(np.quantile(np.asarray(similarities, dtype=float), quantile)))


class SemanticReward(Similarity):
    """R_sim under a frozen sentence embedder (semrl.models.embedder.Similarity), rescaled by tau."""

    __name__ = "semantic"

    def __init__(self, embedder: Any, tau: float = 0.0, reference_column: str = "reference", cache: bool = True,
                 batch_size: int = 64, device: str | None = None):
        if not 0.0 <= float(tau) < 1.0:
            raise SemrlError(f"semantic reward: tau must be in [0, 1), got {tau}")
        super().__init__(embedder, cache=cache, batch_size=batch_size, device=device)
        self.tau, self.reference_column = float(tau), reference_column

    def similarity(self, completions: list[Any], references: list[str]) -> list[float]:
        """Cosine s per (completion, reference) pair; TRL's completions may be message lists."""
        return super().similarity([completion_text(c) for c in completions], references)

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        if self.reference_column not in columns:
            raise SemrlError(f"semantic reward: dataset column {self.reference_column!r} missing "
                             f"(columns: {', '.join(sorted(columns))})")
        return [rescale(s, self.tau) for s in self.similarity(completions, list(columns[self.reference_column]))]


class ContrastiveSemanticReward(SemanticReward):
    """NOT the paper's R_sim: cosine to the completion's own reference minus its mean cosine to the other
    distinct references of the batch (a GRPO batch holds several prompts). A template close to every
    reference of a kind — what GRPO found under R_sim at tiny scale, its outputs no longer depending on the
    input (docs/method.md "Rewards") — gains nothing here: only what matches this input more than the others does.
    Within a group the other references are the same for every completion, so the advantage sees exactly
    that difference. In [-2, 2], no tau; a batch with a single distinct reference scores the plain cosine.
    An empty completion scores 0."""

    __name__ = "semantic_contrast"

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        if self.reference_column not in columns:
            raise SemrlError(f"semantic_contrast reward: dataset column {self.reference_column!r} missing "
                             f"(columns: {', '.join(sorted(columns))})")
        refs = [str(r) for r in columns[self.reference_column]]
        texts = [completion_text(c) for c in completions]
        distinct = list(dict.fromkeys(refs))
        column = {r: j for j, r in enumerate(distinct)}
        values = np.zeros(len(texts))
        filled = [i for i, t in enumerate(texts) if t.strip()]
        if filled:
            sims = self._encode([texts[i] for i in filled]) @ self._references(distinct).T  # (filled, distinct)
            for row, i in enumerate(filled):
                own = column[refs[i]]
                others = np.delete(sims[row], own)
                values[i] = sims[row, own] - (others.mean() if others.size else 0.0)
        return [float(x) for x in np.nan_to_num(values)]


class LanguageReward:
    """R_lang = 1 if the completion, as decoded, is in the target script, else 0 (empty output: 0). In the
    script means (semrl.core.text.in_script) at least one letter and every letter in the script, and
    (min_share) target-script letters make up at least that share of its non-space characters: digits and
    punctuation are allowed, but "ཀ 123 !!!" (one letter in seven characters) is not Tibetan text. 0 keeps
    the paper's rule alone. graded=True (not the paper's): the target script's share of the non-space
    characters instead of 0/1, so a mostly-Tibetan completion is not paid like a perfect one."""

    __name__ = "language"

    def __init__(self, script: str, min_share: float = 0.5, graded: bool = False):
        if script not in ("bo", "zh"):
            raise SemrlError(f"language reward: script must be 'bo' or 'zh', got {script!r}")
        if not 0.0 <= float(min_share) <= 1.0:
            raise SemrlError(f"language reward: min_share must be in [0, 1], got {min_share}")
        self.script, self.min_share, self.graded = script, float(min_share), bool(graded)

    def value(self, text: str) -> float:
        if self.graded:  # NOT the paper's 0/1: the share of the non-space characters in the target script
            chars = sum(not c.isspace() for c in text)
            return script_counts(text)[self.script] / chars if chars else 0.0
        if not in_script(text, self.script):
            return 0.0
        chars = sum(not c.isspace() for c in text)
        return 1.0 if script_counts(text)[self.script] >= self.min_share * chars else 0.0

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        return [self.value(completion_text(c)) for c in completions]


class MetricReward:
    """A sentence-level task metric in [0, 1] against the reference column (semrl.evaluation.metrics.
    item_scores: sentence BLEU or chrF on syllable/character tokens, ROUGE-L). For the paper's ablations."""

    def __init__(self, metric: str, script: str, reference_column: str = "reference"):
        self.metric, self.script, self.reference_column = metric, script, reference_column
        self.__name__ = metric

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        from semrl.evaluation.metrics import item_scores

        refs = list(columns[self.reference_column])
        return item_scores(self.metric, [completion_text(c) for c in completions], refs, self.script)


def _semantic(ctx: dict[str, Any], cls: type[SemanticReward] = SemanticReward, **kw: Any) -> RewardFunc:
    return cls(kw.pop("embedder", ctx["embedder"]), tau=kw.pop("tau", ctx["tau"]),
               reference_column=kw.pop("reference_column", ctx["reference_column"]),
               device=kw.pop("device", ctx.get("device")), **kw)


def _with_script(cls):
    return lambda ctx, **kw: cls(kw.pop("script", ctx["script"]), **kw)


def _metric(name: str):
    return lambda ctx, **kw: MetricReward(name, kw.pop("script", ctx["script"]),
                                          reference_column=kw.pop("reference_column", ctx["reference_column"]), **kw)


def _repetition(ctx: dict[str, Any], ngram_size: int = 3, max_penalty: float = -1.0) -> RewardFunc:
    """TRL's n-gram repetition penalty (Demystifying Long CoT, App. C.2): (1 − unique/total token n-grams) ×
    max_penalty — 0 for a completion without a repeated n-gram. The embedders' cosine is blind to a loop
    (a text repeated four times embeds like the text once), which GRPO found at tiny scale: docs/method.md "Rewards"."""
    from trl.rewards import get_repetition_penalty_reward

    func = get_repetition_penalty_reward(ngram_size=ngram_size, max_penalty=max_penalty)
    func.__name__ = "repetition"  # TRL logs rewards/repetition/mean, beside rewards/semantic/mean
    return func


REGISTRY: dict[str, Callable[..., RewardFunc]] = {
    "semantic": _semantic,
    "language": _with_script(LanguageReward),
    "bleu": _metric("bleu"),
    "chrf": _metric("chrf"),
    "rouge_l": _metric("rouge_l"),
    "repetition": _repetition,
    "semantic_contrast": lambda ctx, **kw: _semantic(ctx, cls=ContrastiveSemanticReward, **kw),
}


def build_rewards(components: Iterable[RewardComponent | dict[str, Any]],
                  context: dict[str, Any]) -> tuple[list[RewardFunc], list[float]]:
    """(reward functions, weights) from `[{name, weight, **options}]`. A name is a registered reward or a
    dotted import path to a TRL-style reward function (or a class/factory called with the options).
    context supplies the defaults: embedder (path or model), tau (a number), script, reference_column."""
    funcs, weights = [], []
    for comp in components:
        comp = comp if isinstance(comp, RewardComponent) else RewardComponent.model_validate(comp)
        name, weight, options = comp.name, comp.weight, comp.options
        if name in REGISTRY:
            func = REGISTRY[name](context, **options)
        elif "." in name:
            obj = import_dotted(name)
            # A TRL reward function takes **kwargs (every dataset column comes to it); anything else — a class,
            # a factory such as trl.rewards.get_repetition_penalty_reward — is called with the options.
            takes_columns = not inspect.isclass(obj) and any(
                p.kind is p.VAR_KEYWORD for p in inspect.signature(obj).parameters.values())
            func = obj(**options) if options or not takes_columns else obj
            if not getattr(func, "__name__", None):
                func.__name__ = name.rpartition(".")[2]
        else:
            raise SemrlError(f"unknown reward {name!r}; known: {', '.join(REGISTRY)}, or a dotted path "
                             "such as mypackage.rewards.my_reward")
        funcs.append(func)
        weights.append(weight)
    return funcs, weights


def finite(func: RewardFunc) -> RewardFunc:
    """A reward function that fails loudly: one value per completion, each a finite number or None (TRL's
    "not applicable"). TRL sums rewards with nansum, so a NaN from a buggy function would silently drop
    out of the total; here it stops training with the function's name, the value and the completion."""
    import math

    name = getattr(func, "__name__", repr(func))

    def checked(prompts, completions, **kwargs):
        # By keyword, as TRL calls a reward: TRL's own (e.g. trl.rewards.get_repetition_penalty_reward) take
        # only what they use, such as completion_ids, and keep the rest in **kwargs.
        values = list(func(prompts=prompts, completions=completions, **kwargs))
        if len(values) != len(completions):
            raise SemrlError(f"reward {name}: {len(values)} values for {len(completions)} completions")
        for i, v in enumerate(values):
            if v is not None and not math.isfinite(float(v)):
                raise SemrlError(f"reward {name} returned {v} for completion {i} ({str(completions[i])[:60]!r}): "
                                 "a reward must be a finite number (or None: not applicable); not training on it")
        return values

    checked.__name__ = name
    return checked


def reward_device(cfg: Config) -> str:
    """embedder.reward.device, else the trainer's device: this rank's GPU (cuda:LOCAL_RANK, within the GPUs
    the flow gave the step) or the CPU. Never a fixed cuda:0, where every rank of a multi-GPU step would
    put its reward model."""
    from semrl.models.generation import step_device

    return cfg.embedder.reward.device or step_device()


def grpo_rewards(cfg: Config, components: Iterable[RewardComponent | dict[str, Any]], script: str,
                 tau: float) -> tuple[list[RewardFunc], list[float]]:
    """GRPO's reward functions as the trainer calls them — the components built with this tau on
    reward_device, each wrapped by `finite` — and their weights: one builder for the trainer
    (semrl.training.trainers) and the reward-signal check before it (semrl.training.tau.group_check)."""
    context = {"embedder": cfg.embedder.reward.out_dir, "tau": tau, "script": script,
               "reference_column": cfg.rewards.reference_column, "device": reward_device(cfg)}
    funcs, weights = build_rewards(components, context)
    return [finite(f) for f in funcs], weights


def score(funcs: list[RewardFunc], weights: list[float], prompts: list[Any], completions: list[Any],
          **columns: Any) -> dict[str, list[float]]:
    """Every component's values plus their weighted sum under `total` (evaluation and benchmarks). Called as
    TRL calls a reward, by keyword; pass completion_ids (token ids) for rewards that read them."""
    out = {f.__name__: [float(v) for v in f(prompts=prompts, completions=completions, **columns)] for f in funcs}
    out["total"] = [sum(w * out[f.__name__][i] for f, w in zip(funcs, weights)) for i in range(len(completions))]
    return out
