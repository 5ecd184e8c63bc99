"""GRPO reward functions (TRL signature `f(prompts, completions, **columns) -> list[float]`) and the registry
that builds them from `params.yaml`.

The paper's reward is R = 1.5 * R_sim + 1.0 * R_lang: R_sim = max(0, (s - tau) / (1 - tau)) with s the
cosine similarity of completion and reference under a frozen sentence embedder, and R_lang = 1 when the
completion is entirely in the target script. Each component is its own function so that TRL weights
them (`reward_weights`) and logs each one separately (`rewards/<name>/mean`).
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Callable

import numpy as np

from semrl import SemrlError
from semrl.text import in_script, metric_tokens

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


def calibrate_tau(similarities: list[float], quantile: float) -> float:
    """tau = auto: the given quantile of the cold-start model's similarity on dev, i.e. the level a
    cold-start output reaches (the paper's "minimal semantic adequacy level from the cold-start phase").
    Clipped at 0: a cold start below chance similarity gives no reason to reward negative cosines."""
    if not similarities:
        raise SemrlError("tau auto: no cold-start similarities to calibrate from")
    return max(0.0, float(np.quantile(np.asarray(similarities, dtype=float), quantile)))


class SemanticReward:
    """R_sim under a frozen sentence embedder. Reference embeddings are cached (a GRPO batch holds each
    reference G times, and epochs repeat them); completions are encoded in one batch per call."""

    __name__ = "semantic"

    def __init__(self, embedder: Any, tau: float = 0.0, reference_column: str = "reference", cache: bool = True,
                 batch_size: int = 64):
        if not 0.0 <= float(tau) < 1.0:
            raise SemrlError(f"semantic reward: tau must be in [0, 1), got {tau}")
        if isinstance(embedder, (str, Path)):
            from semrl.embedder import load_embedder

            embedder = load_embedder(embedder)
        self.model, self.tau, self.reference_column = embedder, float(tau), reference_column
        self.cache: dict[str, np.ndarray] | None = {} if cache else None
        self.batch_size = batch_size

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)

    def _references(self, references: list[str]) -> np.ndarray:
        if self.cache is None:
            return self._encode(references)
        missing = list(dict.fromkeys(r for r in references if r not in self.cache))
        if missing:
            self.cache.update(zip(missing, self._encode(missing)))
        return np.stack([self.cache[r] for r in references])

    def similarity(self, completions: list[Any], references: list[str]) -> list[float]:
        """Cosine s per pair; an empty completion scores 0 (an empty text has no meaningful embedding)."""
        texts = [completion_text(c) for c in completions]
        if len(texts) != len(references):
            raise SemrlError(f"semantic reward: {len(texts)} completions but {len(references)} references")
        filled = [i for i, t in enumerate(texts) if t.strip()]
        s = np.zeros(len(texts))
        if filled:
            comp = self._encode([texts[i] for i in filled])
            refs = self._references([references[i] for i in filled])
            s[filled] = np.einsum("ij,ij->i", comp, refs)
        return [float(x) for x in np.nan_to_num(s)]

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        if self.reference_column not in columns:
            raise SemrlError(f"semantic reward: dataset column {self.reference_column!r} missing "
                             f"(columns: {', '.join(sorted(columns))})")
        return [rescale(s, self.tau) for s in self.similarity(completions, list(columns[self.reference_column]))]


class LanguageReward:
    """R_lang = 1 if the completion is entirely in the target script, else 0 (empty output: 0). The rule
    (semrl.text.in_script): at least one letter and every letter in the script; digits, punctuation,
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


def _import(path: str) -> Any:
    module, _, attr = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise SemrlError(f"reward {path!r}: cannot import ({e})") from None


def build_rewards(components: list[dict[str, Any]], context: dict[str, Any]) -> tuple[list[RewardFunc], list[float]]:
    """(reward functions, weights) from `[{name, weight, **options}]`. A name is a registered reward or a
    dotted import path to a TRL-style reward function (or a class/factory called with the options).
    context supplies the defaults: embedder (path or model), tau (a number), script, reference_column."""
    funcs, weights = [], []
    for comp in components:
        comp = dict(comp)
        name, weight = comp.pop("name", None), float(comp.pop("weight", 1.0))
        if name in REGISTRY:
            func = REGISTRY[name](context, **comp)
        elif name and "." in name:
            obj = _import(name)
            func = obj(**comp) if comp or inspect.isclass(obj) else obj
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


def resolve_tau(cfg: dict[str, Any], cold_start_similarities: list[float] | None = None) -> float:
    """`rewards.tau`: a number, or `auto` (needs the cold-start model's similarities on dev)."""
    tau = cfg["tau"]
    if tau == "auto":
        if cold_start_similarities is None:
            raise SemrlError("rewards.tau is auto: calibrate it from the cold-start model's dev similarities")
        return calibrate_tau(cold_start_similarities, float(cfg["tau_quantile"]))
    return float(tau)
