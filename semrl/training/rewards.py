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
from semrl.core.config import RewardComponent
from semrl.core.io import import_dotted
from semrl.core.text import in_script, metric_tokens
from semrl.models.embedder import Similarity

RewardFunc = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """TRL passes plain strings, or for conversational data a list of messages (the last is ours)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
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
                 batch_size: int = 64):
        if not 0.0 <= float(tau) < 1.0:
            raise SemrlError(f"semantic reward: tau must be in [0, 1), got {tau}")
        super().__init__(embedder, cache=cache, batch_size=batch_size)
        self.tau, self.reference_column = float(tau), reference_column

    def similarity(self, completions: list[Any], references: list[str]) -> list[float]:
        """Cosine s per (completion, reference) pair; TRL's completions may be message lists."""
        return super().similarity([completion_text(c) for c in completions], references)

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        if self.reference_column not in columns:
            raise SemrlError(f"semantic reward: dataset column {self.reference_column!r} missing "
                             f"(columns: {', '.join(sorted(columns))})")
        return [rescale(s, self.tau) for s in self.similarity(completions, list(columns[self.reference_column]))]


class LanguageReward:
    """R_lang = 1 if the completion is entirely in the target script, else 0 (empty output: 0). The rule
    (semrl.core.text.in_script): at least one letter and every letter in the script; digits, punctuation,
    symbols and whitespace of any script are allowed."""

    __name__ = "language"

    def __init__(self, script: str):
        if script not in ("bo", "zh"):
            raise SemrlError(f"language reward: script must be 'bo' or 'zh', got {script!r}")
        self.script = script

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        return [1.0 if in_script(completion_text(c), self.script) else 0.0 for c in completions]


class _SacrebleuReward:
    """Sentence-level sacrebleu score in [0, 1] against the reference column, on syllable (Tibetan) or
    character (Chinese) tokens. For the paper's reward ablations."""

    def __init__(self, script: str, reference_column: str = "reference"):
        self.script, self.reference_column = script, reference_column

    def score(self, hypothesis: str, reference: str) -> float:
        raise NotImplementedError

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        refs = columns[self.reference_column]
        return [self.score(metric_tokens(completion_text(c), self.script), metric_tokens(r, self.script)) / 100.0
                for c, r in zip(completions, refs)]


class BleuReward(_SacrebleuReward):
    __name__ = "bleu"

    def score(self, hypothesis: str, reference: str) -> float:
        import sacrebleu

        return sacrebleu.sentence_bleu(hypothesis, [reference], tokenize="none", smooth_method="exp").score


class ChrfReward(_SacrebleuReward):
    __name__ = "chrf"

    def score(self, hypothesis: str, reference: str) -> float:
        import sacrebleu

        return sacrebleu.sentence_chrf(hypothesis, [reference]).score


# ---------------------------------------------------------------- registry


def _semantic(ctx: dict[str, Any], **kw: Any) -> RewardFunc:
    return SemanticReward(kw.pop("embedder", ctx["embedder"]), tau=kw.pop("tau", ctx["tau"]),
                          reference_column=kw.pop("reference_column", ctx["reference_column"]), **kw)


def _with_script(cls):
    return lambda ctx, **kw: cls(kw.pop("script", ctx["script"]), **kw)


def _with_reference(cls):
    return lambda ctx, **kw: cls(kw.pop("script", ctx["script"]),
                                 reference_column=kw.pop("reference_column", ctx["reference_column"]), **kw)


REGISTRY: dict[str, Callable[..., RewardFunc]] = {
    "semantic": _semantic,
    "language": _with_script(LanguageReward),
    "bleu": _with_reference(BleuReward),
    "chrf": _with_reference(ChrfReward),
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
            func = obj(**options) if options or inspect.isclass(obj) else obj
            if not getattr(func, "__name__", None):
                func.__name__ = name.rpartition(".")[2]
        else:
            raise SemrlError(f"unknown reward {name!r}; known: {', '.join(REGISTRY)}, or a dotted path "
                             "such as mypackage.rewards.my_reward")
        funcs.append(func)
        weights.append(weight)
    return funcs, weights


def score(funcs: list[RewardFunc], weights: list[float], prompts: list[Any], completions: list[Any],
          **columns: Any) -> dict[str, list[float]]:
    """Every component's values plus their weighted sum under `total` (evaluation and benchmarks)."""
    out = {f.__name__: [float(v) for v in f(prompts, completions, **columns)] for f in funcs}
    out["total"] = [sum(w * out[f.__name__][i] for f, w in zip(funcs, weights)) for i in range(len(completions))]
    return out
