"""Batched generation: a decoding loop over the KV cache with HF's sampling semantics (GRPO rollouts), and
chat generation with fixed settings on top of it (cold-start calibration, evaluation, the trajectory).

HF's `generate` spends more per token on bookkeeping (logits processors, a full-vocabulary sort for top-p,
`torch.multinomial`, stopping criteria) than a small model's forward costs; this loop does only the forward
and the draw. Distinct prompts are prefilled once and their cache indexed out to their copies.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from semrl.models.chat import render_prompts, strip_thinking


def shared_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, inverse): one row index per distinct (ids, mask) row, and for every row the index of its
    distinct row in `first`. ids[first][inverse] == ids."""
    _, inverse = torch.unique(torch.cat([ids, mask], dim=1), dim=0, return_inverse=True)
    first = torch.empty(int(inverse.max()) + 1, dtype=torch.long, device=ids.device)
    first.scatter_(0, inverse, torch.arange(len(ids), device=ids.device))
    return first, inverse


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids, mask


class Sampler:
    """Temperature, top-k, top-p (nucleus) and min-p sampling with HF's semantics and order (its warpers are
    the reference in the tests), drawing among the `candidates` most likely tokens: sorting a whole vocabulary
    per decoding step cost more than the small model's forward. Rows whose nucleus does not fit in the
    candidates (a flat distribution) are drawn from the whole vocabulary, so the distribution is exact."""

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, candidates: int = 64):
        self.temperature = temperature or 1.0
        self.top_k, self.top_p, self.min_p = top_k or 0, (top_p if top_p is not None else 1.0), min_p or 0.0
        self.candidates = candidates
        self.max_rounds = 32

    def filtered(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, token ids), each (rows, k): the kept tokens' probabilities (0 for dropped ones)."""
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        vocab = probs.size(-1)
        if not self.top_k and self.top_p >= 1.0:  # no truncation by rank: the whole vocabulary, unsorted
            weights, ids = probs, torch.arange(vocab, device=probs.device).expand_as(probs)
            if self.min_p:
                weights = weights * (weights >= self.min_p * weights.max(-1, keepdim=True).values)
            return weights, ids
        k = min(vocab, self.top_k or self.candidates)
        weights, ids = probs.topk(k, dim=-1)  # sorted, most likely first
        if self.top_k:
            weights = weights / weights.sum(-1, keepdim=True)  # top-p then sees the top-k renormalised
        if self.top_p < 1.0:
            before = weights.cumsum(-1) - weights  # mass of the more likely tokens
            fits = before[:, -1] + weights[:, -1] >= self.top_p
            if not bool(fits.all()):  # the nucleus is wider than the candidates: these rows sort everything
                rows = (~fits).nonzero().squeeze(1)
                full_w, full_ids = probs[rows].sort(dim=-1, descending=True)
                weights = torch.cat([weights, weights.new_zeros(len(weights), vocab - k)], 1)
                ids = torch.cat([ids, ids.new_zeros(len(ids), vocab - k)], 1)
                weights[rows], ids[rows] = full_w, full_ids
                before = weights.cumsum(-1) - weights
            keep = before < self.top_p  # HF drops the tail whose mass is <= 1 - top_p
            keep[:, 0] = True
            weights = weights * keep
        if self.min_p:
            weights = weights * (weights >= self.min_p * weights[:, :1])
        return weights, ids

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row. With top-k, a draw among the k kept tokens. Otherwise rejection sampling for
        the nucleus (as FlashInfer does): draw from the tokens above a pivot, accept when fewer than top_p of
        the mass is more likely than the draw, else raise the pivot to the draw and retry; every round keeps
        a superset of the nucleus, so the accepted draw follows the nucleus distribution exactly."""
        if self.top_k:
            weights, ids = self.filtered(logits)
            return ids.gather(1, draw(weights)).squeeze(1)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.min_p:  # min-p keeps an upper set too: start from it
            probs_in = probs * (probs >= self.min_p * probs.max(-1, keepdim=True).values)
        else:
            probs_in = probs
        token = torch.empty(len(probs), dtype=torch.long, device=probs.device)
        active = torch.arange(len(probs), device=probs.device)
        pivot = torch.full((len(probs), 1), -1.0, device=probs.device)
        for _ in range(self.max_rounds):
            p, w = probs[active], probs_in[active]
            x = draw(w * (w > pivot[active]))
            if self.top_p >= 1.0:
                token[active] = x.squeeze(1)
                return token
            px = p.gather(1, x)
            ok = (p * (p > px)).sum(-1) < self.top_p
            token[active[ok]] = x[ok].squeeze(1)
            pivot[active[~ok]] = px[~ok]
            active = active[~ok]
            if not len(active):
                return token
        weights, ids = self.filtered(logits[active])  # rare: a long tail of rejections
        token[active] = ids.gather(1, draw(weights)).squeeze(1)
        return token


def draw(weights: torch.Tensor) -> torch.Tensor:
    """One index per row with probability proportional to its (non-negative) weight: the inverse CDF, which
    on the CPU is several times cheaper than torch.multinomial over a vocabulary."""
    cdf = weights.cumsum(-1)
    u = torch.rand(len(weights), 1, device=weights.device) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True)
    last = weights.size(-1) - 1 - (weights > 0).flip(-1).int().argmax(-1, keepdim=True)  # u rounded up to the total
    return torch.minimum(idx, last)


def kv_cache(output):
    """A forward's KV cache (`cache` since transformers 5.x, `past_key_values` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@torch.no_grad()
def sample_completions(model, prompt_ids: list[list[int]], *, max_new_tokens: int, eos_ids: list[int], pad_id: int,
                       sampler: Sampler | None) -> list[list[int]]:
    """Completions, one per prompt row, each cut after its first EOS (kept, as TRL keeps it). Distinct prompts
    are prefilled once and their cache indexed out to the copies. Positions count from the padded row's start,
    as in TRL's scoring forward (RoPE sees only differences, so left padding changes nothing)."""
    if max_new_tokens <= 0:
        return [[] for _ in prompt_ids]
    device = next(model.parameters()).device
    pad_id = eos_ids[0] if pad_id is None else pad_id
    ids, mask = left_pad(prompt_ids, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    first, inverse = shared_rows(ids, mask)
    out = model(input_ids=ids[first], attention_mask=mask[first], use_cache=True, logits_to_keep=1)
    cache = kv_cache(out)
    cache.batch_select_indices(inverse)
    logits = out.logits[inverse, -1].float()
    eos = torch.tensor(eos_ids, device=device)
    done = torch.zeros(len(ids), dtype=torch.bool, device=device)
    steps = []
    for t in range(max_new_tokens):
        token = sampler(logits) if sampler is not None else logits.argmax(dim=-1)  # None: greedy
        token = torch.where(done, torch.full_like(token, pad_id), token)
        steps.append(token)
        done |= torch.isin(token, eos)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
        cache = kv_cache(out)
        logits = out.logits[:, -1].float()
    completions = torch.stack(steps, dim=1).tolist()
    eos_set = set(eos_ids)
    result = []
    for row in completions:
        cut = next((i for i, tok in enumerate(row) if tok in eos_set), None)
        result.append(row if cut is None else row[:cut + 1])
    return result


def accelerator() -> str:
    """Where evaluation runs (one process): the first CUDA device when torch sees one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def step_device() -> str:
    """This training process's device: its rank's GPU (cuda:LOCAL_RANK, within the GPUs the flow gave the
    step), else the CPU. Whatever a rank loads beside its model (τ's sampling model, the embedders of τ and
    the trajectory) goes here; a library's own default (cuda:0) would stack every rank on one GPU."""
    import os

    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def eos_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a completion: the tokenizer's, then the model's generation config's (Qwen3
    lists two, <|im_end|> and <|endoftext|>; stopping on the first alone let a completion run on past the
    other, as TRL's rollouts, which stop on every one, never do)."""
    config = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for i in [config] if isinstance(config, int) else list(config or []):
        if i not in ids:
            ids.append(int(i))
    if not ids:
        raise ValueError("no end-of-sequence token: neither the tokenizer nor the model's generation config names one")
    return ids


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             desc: str = "generate") -> list[str]:
    """Completions for user prompts, through the tokenizer's chat template (thinking off), left-padded in
    batches; a leading thinking block is stripped from each."""
    torch.manual_seed(seed)
    model.eval()
    sampler = Sampler(temperature, None, top_p) if do_sample else None
    eos = eos_ids(model, tokenizer)
    outputs = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        texts = render_prompts(tokenizer, prompts[i:i + batch_size])
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        completions = sample_completions(model, ids, max_new_tokens=max_new_tokens, eos_ids=eos,
                                         pad_id=tokenizer.pad_token_id, sampler=sampler)
        outputs += tokenizer.batch_decode(completions, skip_special_tokens=True)
    return [strip_thinking(o).strip() for o in outputs]
