"""Pairwise preference judges, strong SFT vs GRPO: `proxy` (the independent evaluation embedder: the
output closer to the reference; the tiny default), `local` (a causal LM through transformers) or `openai`
(an OpenAI-compatible chat endpoint, e.g. a vLLM server). One fixed prompt; every pair is judged in both
orders and a side wins only when it is preferred in both, so a judge's position bias becomes ties (counted
apart as order-inconsistent) instead of wins."""
from __future__ import annotations

import os
from typing import Any, Protocol

from semrl import SemrlError
from semrl.core.config import JudgeConfig


class Judge(Protocol):
    name: str

    def first_is_better(self, items: list[dict[str, str]]) -> list[bool | None]:
        """Per item {source, reference, first, second}: True / False, or None for no verdict."""


def prompt_of(cfg: JudgeConfig, item: dict[str, str]) -> str:
    return cfg.prompt.format(source=item["source"], reference=item["reference"], a=item["first"], b=item["second"])


class ProxyJudge:
    """Whichever output the evaluation embedder places closer to the reference; closer by less than the
    margin is no verdict. Not an LLM judge, and labelled so in the report."""

    def __init__(self, eval_embedder, tie_margin: float):
        from semrl.models.embedder import Similarity

        self.sim, self.margin = Similarity(eval_embedder), tie_margin
        self.name = "proxy: independent evaluation embedder, closer to the reference (not an LLM judge)"

    def first_is_better(self, items):
        refs = [x["reference"] for x in items]
        a = self.sim.similarity([x["first"] for x in items], refs)
        b = self.sim.similarity([x["second"] for x in items], refs)
        return [None if abs(x - y) < self.margin else x > y for x, y in zip(a, b)]


class LocalJudge:
    """A causal LM through transformers: after the chat prompt (thinking off), the next-token log-probability
    of "A" against "B" decides; one forward pass per pair and order, no sampling."""

    def __init__(self, cfg: JudgeConfig, batch_size: int = 8, dtype: str = "float32"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from semrl.models.generation import accelerator

        if not cfg.model:
            raise SemrlError("eval.judge.kind local needs eval.judge.model (a hub id or a local path)")
        self.cfg, self.batch_size, self.name = cfg, batch_size, f"local LM {cfg.model}"
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, revision=cfg.revision)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model, revision=cfg.revision, dtype=dtype,
                                                          use_safetensors=True).to(accelerator()).eval()
        self.choices = []
        for letter in ("A", "B"):
            ids = self.tokenizer(letter, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise SemrlError(f"judge {cfg.model}: {letter!r} is {len(ids)} tokens; the judge needs one each")
            self.choices.append(ids[0])

    def first_is_better(self, items):
        import torch

        from semrl.models.chat import render_prompts

        verdicts = []
        for i in range(0, len(items), self.batch_size):
            texts = render_prompts(self.tokenizer, [prompt_of(self.cfg, x) for x in items[i:i + self.batch_size]])
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
            with torch.no_grad():  # the head on the last position only: one row of the vocabulary, not one per token
                last = self.model(**enc, logits_to_keep=1).logits[:, -1].float()
            a, b = last[:, self.choices[0]], last[:, self.choices[1]]
            verdicts += [bool(x > y) for x, y in zip(a.tolist(), b.tolist())]
        return verdicts


class OpenAIJudge:
    """An OpenAI-compatible /chat/completions endpoint (a vLLM server, a hosted model): temperature 0, one
    token; an answer that is not A or B is no verdict."""

    def __init__(self, cfg: JudgeConfig):
        if not cfg.base_url or not cfg.model:
            raise SemrlError("eval.judge.kind openai needs eval.judge.base_url and eval.judge.model")
        self.cfg, self.name = cfg, f"{cfg.model} at {cfg.base_url}"

    def _ask(self, text: str) -> bool | None:
        import requests

        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env or "", "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": self.cfg.model, "messages": [{"role": "user", "content": text}], "temperature": 0,
                "max_tokens": 1}
        resp = requests.post(self.cfg.base_url.rstrip("/") + "/chat/completions", json=body, headers=headers,
                             timeout=self.cfg.timeout_s)
        if resp.status_code != 200:
            raise SemrlError(f"judge {self.name}: HTTP {resp.status_code}: {resp.text[:200]}")
        answer = (resp.json()["choices"][0]["message"].get("content") or "").strip().upper()[:1]
        return {"A": True, "B": False}.get(answer)

    def first_is_better(self, items):
        return [self._ask(prompt_of(self.cfg, x)) for x in items]


def make_judge(cfg: JudgeConfig, eval_embedder, tie_margin: float, batch_size: int = 8,
               dtype: str = "float32") -> Judge:
    """The configured judge; a local one loads its weights in `dtype` (the profile's weights_dtype: bf16 where
    it trains in bf16)."""
    if cfg.kind == "proxy":
        return ProxyJudge(eval_embedder, tie_margin)
    if cfg.kind == "local":
        return LocalJudge(cfg, batch_size, dtype)
    return OpenAIJudge(cfg)


def preference(judge: Judge, sources: list[str], references: list[str], outputs: dict[tuple[str, int], list[str]],
               a: str = "sft", b: str = "grpo", max_pairs: int | None = None) -> dict[str, Any]:
    """a vs b per seed and item, each pair asked in both orders: a wins when preferred in both, b likewise,
    anything else is a tie (order_inconsistent: the judge flipped with the order)."""
    seeds = sorted({s for (m, s) in outputs if m == a} & {s for (m, s) in outputs if m == b})
    pairs = [(s, i) for s in seeds for i in range(len(references))][:max_pairs]
    asked = [{"source": sources[i], "reference": references[i], "first": outputs[(a, s)][i],
              "second": outputs[(b, s)][i]} for s, i in pairs]
    swapped = [{**x, "first": x["second"], "second": x["first"]} for x in asked]
    v_ab, v_ba = judge.first_is_better(asked), judge.first_is_better(swapped)
    counts = {a: 0, b: 0, "tie": 0, "order_inconsistent": 0}
    for x, y in zip(v_ab, v_ba):
        if x is True and y is False:
            counts[a] += 1
        elif x is False and y is True:
            counts[b] += 1
        else:
            counts["tie"] += 1
            counts["order_inconsistent"] += x is not None and x == y
    n = max(1, len(pairs))
    return {"judge": judge.name, "pairs": len(pairs), "orders": 2, "seeds": seeds,
            **{f"{k}_rate": v / n for k, v in counts.items()}}
