"""Evaluation metrics: BLEU-4/chrF/ROUGE-L on Tibetan syllables or Chinese characters, the official CMRC
2018 EM/F1, and the NLL/KL drift of a model from the base model on answer tokens."""
from __future__ import annotations

import functools
import math
import random
import re
from typing import Any

import numpy as np

from semrl.core.text import in_script, metric_tokens
from semrl.models.chat import render_prompts

# ---------------------------------------------------------------- task metrics


def corpus_bleu(hypotheses: list[str], references: list[str], lang: str) -> float:
    """Corpus BLEU-4 in [0, 1] (the paper's scale) on syllable/character tokens."""
    import sacrebleu

    hyp = [metric_tokens(h, lang) for h in hypotheses]
    ref = [metric_tokens(r, lang) for r in references]
    return sacrebleu.corpus_bleu(hyp, [ref], tokenize="none").score / 100.0


def corpus_chrf(hypotheses: list[str], references: list[str], lang: str) -> float:
    import sacrebleu

    hyp = [metric_tokens(h, lang) for h in hypotheses]
    ref = [metric_tokens(r, lang) for r in references]
    return sacrebleu.corpus_chrf(hyp, [ref]).score / 100.0


class _SpaceTokenizer:
    """rouge-score's default tokenizer drops non-ASCII text; ours is the metric tokenisation, pre-applied."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


def rouge_l(hypotheses: list[str], references: list[str], lang: str) -> float:
    """Mean sentence ROUGE-L F1 in [0, 1] (rouge-score) on syllable/character tokens."""
    scores = item_scores("rouge_l", hypotheses, references, lang)
    return float(np.mean(scores)) if scores else 0.0


# The task metrics by the names `tasks.<name>.metrics` uses: f(hypotheses, references, script) -> [0, 1].
TASK_METRICS = {"bleu": corpus_bleu, "chrf": corpus_chrf, "rouge_l": rouge_l}


def item_scores(metric: str, hypotheses: list[str], references: list[str], lang: str) -> list[float]:
    """The metric per item in [0, 1] (sentence BLEU with exponential smoothing, sentence chrF, ROUGE-L F1):
    what the paired bootstrap resamples. Their mean is not the corpus score for BLEU and chrF."""
    import sacrebleu

    hyp = [metric_tokens(h, lang) for h in hypotheses]
    ref = [metric_tokens(r, lang) for r in references]
    if metric == "bleu":
        return [sacrebleu.sentence_bleu(h, [r], tokenize="none", smooth_method="exp").score / 100 for h, r in zip(hyp, ref)]
    if metric == "chrf":
        return [sacrebleu.sentence_chrf(h, [r]).score / 100 for h, r in zip(hyp, ref)]
    if metric == "rouge_l":
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_SpaceTokenizer())
        return [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyp, ref)]
    raise ValueError(f"item_scores: unknown metric {metric!r} (known: {', '.join(TASK_METRICS)})")


def trivial_baselines(script: str, rows: list[dict[str, str]], train_refs: list[str]) -> dict[str, list[str]]:
    """Outputs that need no model: the input copied whole, and its lead — the input's first k metric
    tokens, k the median length of the training references (for headlines: a lead sentence often restates
    the title). A model that does not beat these has not learned the task."""
    lengths = sorted(len(metric_tokens(r, script).split()) for r in train_refs) or [1]
    k = lengths[len(lengths) // 2]
    lead = [" ".join(metric_tokens(x["input"], script).split()[:k]) for x in rows]
    return {"copy_input": [x["input"] for x in rows], "copy_lead": lead}


def output_stats(outputs: list[str], script: str) -> dict[str, float]:
    n = max(1, len(outputs))
    return {
        "language_consistency": sum(in_script(o, script) for o in outputs) / n,
        "mean_length_chars": sum(len(o) for o in outputs) / n,
        "empty_rate": sum(not o.strip() for o in outputs) / n,
        # Distinct outputs per item (1: every item got an output of its own): a policy that answers every
        # input with one template (close in cosine to every reference of a kind) drives it down — GRPO did.
        "distinct_rate": len(set(o.strip() for o in outputs)) / n,
    }


# ---------------------------------------------------------------- CMRC 2018 (official evaluation script)

CMRC_PUNCTUATION = ['-', ':', '_', '*', '^', '/', '\\', '~', '`', '+', '=', '，', '。', '：', '？', '！', '“', '”',
                    '；', '’', '《', '》', '……', '·', '、', '「', '」', '（', '）', '－', '～', '『', '』']


def _word_tokenize(text: str) -> list[str]:
    """The official script's nltk.word_tokenize on the non-Chinese runs, as nltk's Treebank-style
    NLTKWordTokenizer (no data download): "3.5", "1,000" and "u.s." stay whole, "it's" is it + 's. The one
    difference left: word_tokenize first splits sentences with punkt (a download), so a run holding two
    Latin sentences keeps an inner full stop on its word ("a. b" -> a., b rather than a, ., b)."""
    return _nltk_words().tokenize(text)


@functools.cache
def _nltk_words():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def mixed_segmentation(text: str, rm_punc: bool = False) -> list[str]:
    """CMRC's segmentation: every Chinese character and listed punctuation mark alone, other runs as words."""
    text = str(text).lower().strip()
    segs, buf = [], ""
    for ch in text:
        if rm_punc and ch in CMRC_PUNCTUATION:
            continue
        if re.search(r"[\u4e00-\u9fa5]", ch) or ch in CMRC_PUNCTUATION:
            if buf:
                segs += _word_tokenize(buf)
                buf = ""
            segs.append(ch)
        else:
            buf += ch
    if buf:
        segs += _word_tokenize(buf)
    return segs


def remove_punctuation(text: str) -> str:
    return "".join(ch for ch in str(text).lower().strip() if ch not in CMRC_PUNCTUATION)


def _longest_common_substring(a: list[str], b: list[str]) -> int:
    best, table = 0, [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            if a[i] == b[j]:
                table[i + 1][j + 1] = table[i][j] + 1
                best = max(best, table[i + 1][j + 1])
    return best


def cmrc_f1(answers: list[str], prediction: str) -> float:
    """Max over references of the F1 of the longest common substring of segments (official script)."""
    scores = []
    pred = mixed_segmentation(prediction, rm_punc=True)
    for ans in answers:
        gold = mixed_segmentation(ans, rm_punc=True)
        lcs = _longest_common_substring(gold, pred)
        if lcs == 0:
            scores.append(0.0)
            continue
        p, r = lcs / len(pred), lcs / len(gold)
        scores.append(2 * p * r / (p + r))
    return max(scores) if scores else 0.0


def cmrc_em(answers: list[str], prediction: str) -> float:
    return float(any(remove_punctuation(a) == remove_punctuation(prediction) for a in answers))


def cmrc_scores(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """EM, F1 and their average, in percent as CMRC reports them."""
    em = 100.0 * float(np.mean([cmrc_em(a, p) for p, a in zip(predictions, answers)]))
    f1 = 100.0 * float(np.mean([cmrc_f1(a, p) for p, a in zip(predictions, answers)]))
    return {"cmrc_em": em, "cmrc_f1": f1, "cmrc_avg": (em + f1) / 2}


# ---------------------------------------------------------------- drift from a reference model


def _padded(tokenizer, ids_list: list[list[int]], masks: list[list[int]]):
    import torch

    width = max(map(len, ids_list))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids_list])
    mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    attn = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids_list])
    return ids, attn, mask


def answer_batches(tokenizer, items: list[dict[str, Any]], prompt: str, max_context_tokens: int, batch_size: int):
    """Tokenised (chat prompt + gold answer) batches with a mask of the answer tokens, right-padded."""
    for i in range(0, len(items), batch_size):
        ids_list, masks = [], []
        for item in items[i:i + batch_size]:
            ctx_ids = tokenizer(item["context"], add_special_tokens=False)["input_ids"][:max_context_tokens]
            context = tokenizer.decode(ctx_ids)
            text = render_prompts(tokenizer, [prompt.format(context=context, question=item["question"])])[0]
            p_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            a_ids = tokenizer(item["answers"][0], add_special_tokens=False)["input_ids"]
            ids_list.append(p_ids + a_ids)
            masks.append([0] * len(p_ids) + [1] * len(a_ids))
        yield _padded(tokenizer, ids_list, masks)


def text_batches(tokenizer, texts: list[str], max_tokens: int, batch_size: int):
    """Plain-text batches (no chat markup: language modelling as the base was trained), every token after
    the first scored, right-padded. Texts too short to score a token are the caller's to drop."""
    for i in range(0, len(texts), batch_size):
        ids_list = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts[i:i + batch_size]]
        yield _padded(tokenizer, ids_list, [[1] * len(x) for x in ids_list])


def scored_logprobs(model, ids, attn, pos, chunk_tokens: int = 1024):
    """float32 log-probabilities of the next token at the scored positions only (pos: [batch, len - 1]
    bool, the logits at t predicting token t + 1), chunk_tokens rows at a time. Memory-safe for a large
    vocabulary: the final hidden states are sliced to the scored positions before the LM head, so no
    [batch, len, vocab] tensor exists (Qwen3's 151,936-token vocabulary at batch 32 x ~900 tokens would be
    ~18 GB per model in float32); the head runs in the model's dtype (bf16 on GPU) and only the chunk's
    log-softmax in float32. Yields (rows of the chunk, log-probs [rows, vocab])."""
    import torch

    decoder = getattr(model, "get_decoder", lambda: None)()
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if decoder is None or head is None or decoder is model:  # no decoder/head split: full logits, then slice
        states, head = model(input_ids=ids, attention_mask=attn).logits[:, :-1][pos], (lambda x: x)
    else:
        states = decoder(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1][pos]
    for i in range(0, states.shape[0], chunk_tokens):
        rows = torch.arange(i, min(i + chunk_tokens, states.shape[0]))
        yield rows, head(states[rows]).float().log_softmax(-1)


def _per_item_mean(values, pos) -> list[float]:
    """Per item (row of pos), the mean of the values of its scored positions (values in pos.nonzero() order)."""
    import torch

    n = pos.sum(1).clamp(min=1).float()
    return (torch.zeros(len(n), device=values.device).index_add_(0, pos.nonzero()[:, 0], values) / n).tolist()


def nll_and_kl(model, ref, batches, chunk_tokens: int = 1024) -> tuple[list[float], list[float], list[float]]:
    """Per item: mean NLL of the masked tokens under model and ref, and the mean over those positions of
    KL(ref || model) between their next-token distributions (both share one tokenizer). Only the masked
    positions are ever turned into vocabulary-sized log-probs (scored_logprobs)."""
    nll_model, per_ref = nll_and_kl_many({"model": model}, {"ref": ref}, batches, chunk_tokens)["model"]
    return nll_model, *per_ref["ref"]


def nll_and_kl_many(models: dict[str, Any], refs: dict[str, Any], batches, chunk_tokens: int = 1024):
    """nll_and_kl of several models against several references in one pass over the batches: every model
    and reference runs once per batch, however many pairs it is in (evaluation compares a seed's cold
    start, SFT, GRPO and ablations with the same base and cold start: one forward each, not one per pair),
    and one that is both (the same object) runs once. The chunks of every model are held together:
    (models + references) x chunk_tokens x vocabulary floats. Returns {model name: (NLL per item,
    {ref name: (ref NLL per item, KL(ref || model) per item)})}."""
    import torch

    nets: dict[int, Any] = {}  # each distinct model object once, references first
    for net in (*refs.values(), *models.values()):
        nets.setdefault(id(net), net)
    for net in nets.values():
        net.eval()
    device = next(iter(models.values())).device
    out = {name: ([], {r: ([], []) for r in refs}) for name in models}
    with torch.no_grad():
        for ids, attn, mask in batches:
            pos = mask[:, 1:].bool()  # the logits at t predict token t + 1
            streams = [scored_logprobs(net, ids.to(net.device), attn.to(net.device), pos.to(net.device), chunk_tokens)
                       for net in nets.values()]
            ids, pos = ids.to(device), pos.to(device)
            target = ids[:, 1:][pos]
            tok = {key: torch.zeros(len(target), device=device) for key in nets}
            kl = {(name, r): torch.zeros(len(target), device=device) for name in models for r in refs}
            for chunks in zip(*streams):
                rows = chunks[0][0]
                lp = {key: lp_.to(device) for key, (_, lp_) in zip(nets, chunks)}
                t = target[rows].unsqueeze(-1)
                for key in nets:
                    tok[key][rows] = -lp[key].gather(-1, t).squeeze(-1)
                for r, ref in refs.items():
                    lp_r = lp[id(ref)]
                    p_r = lp_r.exp()
                    for name, net in models.items():
                        kl[(name, r)][rows] = (p_r * (lp_r - lp[id(net)])).sum(-1)
            nll = {key: _per_item_mean(tok[key], pos) for key in nets}
            for name, net in models.items():
                out[name][0].extend(nll[id(net)])
                for r, ref in refs.items():
                    out[name][1][r][0].extend(nll[id(ref)])
                    out[name][1][r][1].extend(_per_item_mean(kl[(name, r)], pos))
    return out


def mean_nll(model, batches, chunk_tokens: int = 1024) -> list[float]:
    """Per item: the model's mean NLL over the masked tokens (scored positions only, as nll_and_kl)."""
    import torch

    out: list[float] = []
    model.eval()
    with torch.no_grad():
        for ids, attn, mask in batches:
            ids, attn, mask = ids.to(model.device), attn.to(model.device), mask.to(model.device)
            pos = mask[:, 1:].bool()
            target = ids[:, 1:][pos]
            tok = torch.zeros(len(target), device=model.device)
            for rows, lp in scored_logprobs(model, ids, attn, pos, chunk_tokens):
                tok[rows] = -lp.gather(-1, target[rows].unsqueeze(-1)).squeeze(-1)
            out += _per_item_mean(tok, pos)
    return out


def skill_items(pairs: list[tuple[str, str]], n: int, choices: int, seed: int,
                pool: list[str] | None = None) -> list[dict[str, Any]]:
    """The first n (riddle, answer) pairs as multiple-choice items: the answer among choices - 1 other
    answers drawn from pool (default: the pairs' answers; distinct texts), in a seeded order."""
    rng = random.Random(seed)
    answers = sorted(set(pool if pool is not None else [a for _, a in pairs]))
    items = []
    for riddle, answer in pairs[:n]:
        options = [answer]
        while len(options) < min(choices, len(answers)):
            other = rng.choice(answers)
            if other not in options:
                options.append(other)
        rng.shuffle(options)
        items.append({"riddle": riddle, "choices": options, "answer_index": options.index(answer)})
    return items


def skill_probe(model, tokenizer, items: list[dict[str, Any]], prompt: str, batch_size: int) -> list[float]:
    """Per item 1.0 when the true answer has the lowest mean token NLL among the choices (after the chat
    prompt, the answer and its end-of-turn token scored), else 0.0."""
    seqs, masks = [], []
    for x in items:
        head = render_prompts(tokenizer, [prompt.format(riddle=x["riddle"])])[0]
        head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        for option in x["choices"]:
            tail = tokenizer(option + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            seqs.append(head_ids + tail)
            masks.append([0] * len(head_ids) + [1] * len(tail))
    batches = (_padded(tokenizer, seqs[i:i + batch_size], masks[i:i + batch_size])
               for i in range(0, len(seqs), batch_size))
    nll = mean_nll(model, batches)
    scores, k = [], 0
    for x in items:
        m = len(x["choices"])
        scores.append(float(int(np.argmin(nll[k:k + m])) == x["answer_index"]))
        k += m
    return scores


def lm_probe_texts(lines: list[str], n: int, min_chars: int, fill: list[str] = ()) -> list[str]:
    """The probe's texts: the first n held-out lines of at least min_chars characters, topped up to n from
    `fill` (distinct texts, same length rule) — a fixed set, so every variant is scored on the same items
    and differences pair up."""
    texts = [x for x in lines if len(x) >= min_chars][:n]
    for x in dict.fromkeys(fill):
        if len(texts) >= n:
            break
        if len(x) >= min_chars and x not in texts:
            texts.append(x)
    return texts


def probe_texts(cfg, n: int) -> tuple[list[str], dict[str, int]]:
    """The LM probe's texts for a config, and how many came from each source: the held-out lines of the
    base's LM text (lm/zh.txt), then, with eval.lm_probe_cmrc_contexts, the distinct CMRC 2018 *dev*
    contexts — general Chinese (Wikipedia) that no stage trains on (the base learns from the trial set)."""
    from semrl.core.io import read_jsonl
    from semrl.models.base import lm_split

    e = cfg.eval
    held = lm_split(cfg, "zh")[1]
    own = lm_probe_texts(held, n, e.lm_probe_min_chars)
    fill = []
    if e.lm_probe_cmrc_contexts:
        fill = [r["context"] for r in read_jsonl(cfg.prepare.out_dir / "general" / "cmrc_dev.jsonl")]
    texts = lm_probe_texts(held, n, e.lm_probe_min_chars, fill)
    return texts, {"heldout_lm_lines": len(own), "cmrc_dev_contexts": len(texts) - len(own)}


def lm_probe(model, refs: dict[str, Any], tokenizer, texts: list[str], max_tokens: int,
             batch_size: int) -> dict[str, list[float]]:
    """Per text: the model's mean token NLL, and against each reference model (name -> model) the NLL
    increase over it and KL(ref || model). Plain text, no chat markup: what the base was trained on."""
    return lm_probe_many({"model": model}, refs, tokenizer, texts, max_tokens, batch_size)["model"]


def lm_probe_many(models: dict[str, Any], refs: dict[str, Any], tokenizer, texts: list[str], max_tokens: int,
                  batch_size: int) -> dict[str, dict[str, list[float]]]:
    """lm_probe of several models (name -> model) in one pass: each reference runs once per batch."""
    found = nll_and_kl_many(models, refs, text_batches(tokenizer, texts, max_tokens, batch_size))
    out: dict[str, dict[str, list[float]]] = {}
    for model_name, (nll_m, per_ref) in found.items():
        probe: dict[str, list[float]] = {"lm_nll": nll_m}
        for name, (nll_r, kls) in per_ref.items():
            probe[f"lm_nll_increase_vs_{name}"] = (np.asarray(nll_m) - np.asarray(nll_r)).tolist()
            probe[f"lm_kl_vs_{name}"] = kls
        out[model_name] = probe
    return out


def drift_summary(nll_model: list[float], nll_base: list[float], kls: list[float]) -> dict[str, float]:
    inc = np.asarray(nll_model) - np.asarray(nll_base)
    return {"nll_increase_mean": float(inc.mean()), "nll_increase_p90": float(np.percentile(inc, 90)),
            "kl_p90": float(np.percentile(kls, 90)), "answer_nll_mean": float(np.mean(nll_model)),
            "answer_ppl": float(math.exp(np.mean(nll_model)))}
