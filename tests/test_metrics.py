"""Metric functions against hand-computed values on small real examples."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from semrl.core.config import EvalConfig
from semrl.evaluation.metrics import (
    answer_batches,
    item_scores,
    lm_probe,
    lm_probe_many,
    lm_probe_texts,
    nll_and_kl,
    text_batches,
    cmrc_em,
    cmrc_f1,
    cmrc_scores,
    corpus_bleu,
    corpus_chrf,
    drift_summary,
    mixed_segmentation,
    output_stats,
    rouge_l,
    skill_items,
    skill_probe,
)


def test_bleu_on_tibetan_syllables_hand_computed():
    ref = "བཀྲ་ཤིས་བདེ་ལེགས་ཞུ།"          # 5 syllables
    hyp = "བཀྲ་ཤིས་བདེ་ལེགས།"             # its first 4: every n-gram precision is 1, only brevity penalises
    assert corpus_bleu([hyp], [ref], "bo") == pytest.approx(math.exp(1 - 5 / 4), abs=1e-4)
    assert corpus_bleu([ref], [ref], "bo") == pytest.approx(1.0)
    assert corpus_bleu(["ཀ་ཁ"], [ref], "bo") == 0.0
    assert corpus_chrf([ref], [ref], "bo") == pytest.approx(1.0)
    # Chinese: one token per character
    assert corpus_bleu(["祈祷无垢光"], ["祈祷无垢光尊者"], "zh") == pytest.approx(math.exp(1 - 7 / 5), abs=1e-4)


def test_rouge_l_on_syllables_hand_computed():
    # LCS of (ཀ ཁ ག) and (ཀ ག ཁ ང) is 2: P = 2/3, R = 2/4, F = 4/7
    assert rouge_l(["ཀ་ཁ་ག"], ["ཀ་ག་ཁ་ང"], "bo") == pytest.approx(4 / 7)
    assert rouge_l(["ཀ་ཁ་ག"], ["ཀ་ཁ་ག"], "bo") == pytest.approx(1.0)


def test_output_stats():
    s = output_stats(["བོད་ཀྱི", "中文", "", "བོད abc"], "bo")
    assert s == {"language_consistency": 0.25, "mean_length_chars": (7 + 2 + 0 + 7) / 4, "empty_rate": 0.25,
                 "distinct_rate": 1.0}
    assert output_stats(["ཀ", "ཀ ", "ཁ", "ཀ"], "bo")["distinct_rate"] == 0.5  # one template for three inputs


def test_hacking_flags_on_constructed_results():
    from semrl.evaluation.report import hacking_flags, render_macro

    def row(method, seed, length, distinct):
        return {"method": method, "seed": seed, "mean_length_chars": length, "distinct_rate": distinct}

    ev = {"reference_mean_length_chars": 10.0, "trajectories": {
              "grpo/0": [{"step": 0, "reward": 1.0, "sim_eval": 0.5}, {"step": 9, "reward": 1.2, "sim_eval": 0.4}],
              "grpo/1": [{"step": 0, "reward": 1.0, "sim_eval": 0.5}, {"step": 9, "reward": 1.2, "sim_eval": 0.6}]},
          "results": [row("coldstart", 0, 9.0, 0.9), row("coldstart", 1, 9.0, 0.9), row("sft", 0, 20.0, 0.1),
                      row("grpo", 0, 14.0, 0.4), row("grpo", 1, 12.0, 0.5)]}
    flags = hacking_flags(ev)
    assert [(f["method"], f["seed"], f["kind"]) for f in flags] == [  # SFT has no reward: never flagged
        ("grpo", 0, "length"), ("grpo", 0, "collapse"), ("grpo", 0, "reward_vs_similarity")], flags
    text = [render_macro("flag", f) for f in flags]  # as the report prints them
    assert "1.40× the reference length" in text[0] and "40% of its outputs distinct, against 90%" in text[1]
    assert "reward rose +0.200 while the independent similarity fell -0.1000" in text[2]
    ev["results"][3] = row("grpo", 0, 12.0, 0.5)  # 1.2× the length, distinct 0.5 ≥ 0.45
    ev["trajectories"]["grpo/0"][1]["sim_eval"] = 0.5
    assert hacking_flags(ev) == [] and render_macro("no_flag").startswith("- no flag")


@pytest.mark.parametrize("answer, prediction, em, f1", [
    ("北京", "北京", 1.0, 1.0),                        # gold
    ("北京", "北京。", 1.0, 1.0),                      # punctuated: CMRC's punctuation is removed
    ("3.5亿", "3.5亿元", 0.0, 0.8),                    # "3.5" one segment: LCS 2, P 2/3, R 1 (a regex split: 0.889)
    ("1,000米", "1000米", 0.0, 0.5),                   # "1,000" one segment: P 1/2, R 1/2 (regex: 0.333)
    ("U.S. army", "the U.S. army", 0.0, 0.8),          # lower-cased; "u.s." one segment (regex: 0.909)
    ("it's 10%", "it is 10%", 0.0, 0.5),               # it + 's, 10 + %: LCS 2 of 4 and 4
])
def test_cmrc_scores_equal_the_official_script_on_numbers_and_latin(answer, prediction, em, f1):
    """Golden values worked out by hand with the official cmrc2018_evaluate.py algorithm and
    nltk.word_tokenize's Treebank splitting of the non-Chinese runs."""
    assert cmrc_em([answer], prediction) == em
    assert cmrc_f1([answer], prediction) == pytest.approx(f1)


def test_cmrc_normalisation_em_f1_on_real_dev_answers():
    # From CMRC 2018 dev (DEV_0): answers '光荣和ω-force' and '村雨城'.
    assert mixed_segmentation("光荣和ω-force", rm_punc=True) == ["光", "荣", "和", "ωforce"]  # '-' dropped first
    assert mixed_segmentation("光荣和ω-force") == ["光", "荣", "和", "ω", "-", "force"]
    assert cmrc_em(["光荣和ω-force"], "光荣和ω-force。") == 1.0   # punctuation is ignored
    assert cmrc_em(["村雨城"], "村雨城模式") == 0.0
    assert cmrc_f1(["村雨城"], "村雨城模式") == pytest.approx(2 * 0.6 * 1.0 / 1.6)  # LCS 3: P 3/5, R 3/3
    assert cmrc_f1(["村雨城", "雨城"], "雨城") == pytest.approx(1.0)                 # max over references
    assert cmrc_f1(["村雨城"], "") == 0.0
    s = cmrc_scores(["村雨城", "光荣"], [["村雨城"], ["光荣和ω-force"]])
    f1_second = 2 * 1.0 * (2 / 4) / (1 + 2 / 4)  # LCS 光荣 of 4 answer segments
    assert s["cmrc_em"] == pytest.approx(50.0) and s["cmrc_f1"] == pytest.approx(100 * (1 + f1_second) / 2)
    assert s["cmrc_avg"] == pytest.approx((s["cmrc_em"] + s["cmrc_f1"]) / 2)


@pytest.fixture(scope="module")
def tiny(smoke_repo):
    from semrl.models.base import load_base
    from semrl.core.io import read_jsonl

    model, tok = load_base(smoke_repo / "models" / "base")
    items = read_jsonl(smoke_repo / "data" / "prepared" / "general" / "cmrc_dev.jsonl")[:3]
    return model, tok, items


def test_answer_batches_hold_each_item_own_prompt_and_answer(tiny):
    """Every row is its own question's chat prompt followed by its own gold answer (a template variable
    reused across the loop once made every row carry the first question)."""
    _, tok, items = tiny
    prompt = EvalConfig().cmrc_prompt
    [(ids, attn, mask)] = list(answer_batches(tok, items, prompt, 48, batch_size=len(items)))
    for row, item in enumerate(items):
        n = int(attn[row].sum())
        text = tok.decode(ids[row, :n])
        assert text.startswith("<|im_start|>user\n阅读下面的文章") and item["question"] in text
        assert all(other["question"] not in text for other in items if other["question"] != item["question"])
        assert tok.decode(ids[row, :n][mask[row, :n].bool()]) == item["answers"][0]


def perturbed(base):
    """A copy of the model with every weight nudged: a drifted model to score against the original."""
    model = copy.deepcopy(base)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def test_drift_against_a_direct_computation(tiny):
    base, tok, items = tiny
    model = perturbed(base)
    prompt = EvalConfig().cmrc_prompt
    nll_m, nll_b, kls = nll_and_kl(model, base, answer_batches(tok, items, prompt, max_context_tokens=48, batch_size=2))
    # Direct: one question at a time, no padding, positions picked by hand.
    for i, (ids, attn, mask) in enumerate(answer_batches(tok, items, prompt, 48, batch_size=1)):
        n = int(attn.sum())
        ids, mask = ids[:, :n], mask[0, :n]
        answer = [t for t in range(1, n) if mask[t]]
        with torch.no_grad():  # local: the global grad mode stays as it was, even if an assert fails
            lp_m = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            lp_b = F.log_softmax(base(input_ids=ids).logits[0].float(), -1)
        direct_m = -sum(lp_m[t - 1, ids[0, t]] for t in answer) / len(answer)
        direct_b = -sum(lp_b[t - 1, ids[0, t]] for t in answer) / len(answer)
        kl_terms = [F.kl_div(lp_m[t - 1], lp_b[t - 1], log_target=True, reduction="sum") for t in answer]
        direct_kl = sum(kl_terms) / len(answer)
        assert nll_m[i] == pytest.approx(float(direct_m), rel=1e-4)
        assert nll_b[i] == pytest.approx(float(direct_b), rel=1e-4)
        assert kls[i] == pytest.approx(float(direct_kl), rel=1e-3, abs=1e-6)
    same = nll_and_kl(base, base, answer_batches(tok, items, prompt, 48, 2))
    assert drift_summary(*same)["nll_increase_mean"] == 0.0 and max(same[2]) < 1e-6
    assert drift_summary(nll_m, nll_b, kls)["kl_p90"] > 0



def test_drift_scores_only_the_answer_positions_in_chunks(tiny):
    """Memory safety for a large vocabulary: the LM head sees only the scored positions (never a
    [batch, length, vocab] tensor), a chunk at a time, and the chunking changes nothing."""
    from semrl.evaluation.metrics import mean_nll

    base, tok, items = tiny
    model = perturbed(base)
    prompt = EvalConfig().cmrc_prompt
    batches = list(answer_batches(tok, items, prompt, 48, batch_size=len(items)))
    answer_tokens = sum(int(m[:, 1:].sum()) for _, _, m in batches)
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    try:
        chunked = nll_and_kl(model, base, batches, chunk_tokens=3)
    finally:
        hook.remove()
    assert all(len(shape) == 2 and shape[0] <= 3 for shape in seen)  # [positions, hidden]: no length axis
    assert sum(shape[0] for shape in seen) == answer_tokens  # every answer token once, nothing else
    whole = nll_and_kl(model, base, batches, chunk_tokens=10 ** 6)
    for a, b in zip(chunked, whole):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    assert mean_nll(model, batches, chunk_tokens=2) == pytest.approx(whole[0], rel=1e-5)

def test_item_scores_average_to_the_sentence_metrics():
    hyps = ["བོད་ཀྱི་ཡུལ་ལ་", "ཟླ་བ་དང་པོ", ""]
    refs = ["བོད་ཀྱི་ཡུལ་ལ་", "ཟླ་བ་གཉིས་པ", "ཚེས་"]
    chrf = item_scores("chrf", hyps, refs, "bo")
    assert chrf[0] == pytest.approx(1.0) and 0 < chrf[1] < 1 and chrf[2] == 0.0
    assert sum(item_scores("rouge_l", hyps, refs, "bo")) / 3 == pytest.approx(rouge_l(hyps, refs, "bo"))
    # ROUGE-L of "ཟླ བ དང པོ" vs "ཟླ བ གཉིས པ": LCS 2 of 4 and 4 -> F1 0.5
    assert item_scores("rouge_l", hyps, refs, "bo")[1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown metric 'ter'"):
        item_scores("ter", hyps, refs, "bo")


def test_lm_probe_scores_plain_text_per_item(tiny):
    base, tok, _ = tiny
    lines = ["短", "这是一段足够长的中文文本，用来测试语言模型探针的每条结果。", "另一段同样足够长的中文文本，它在后面出现。"]
    texts = lm_probe_texts(lines, n=5, min_chars=10)
    assert texts == lines[1:]
    fill = ["太短", lines[1], "第三段来自别处的足够长的中文文本，补足探针。", "第三段来自别处的足够长的中文文本，补足探针。",
            "第四段来自别处的足够长的中文文本，也补进来。", "第五段足够长的文本，但探针已经满了。"]
    assert lm_probe_texts(lines, n=4, min_chars=10, fill=fill) == lines[1:] + [fill[2], fill[4]]  # distinct, long
    [(ids, attn, mask)] = list(text_batches(tok, texts, 64, batch_size=2))
    first = tok.decode(ids[0, : int(attn[0].sum())])
    assert first == texts[0] and "<|im_start|>" not in first  # plain text, no chat markup
    model = perturbed(base)
    probe = lm_probe(model, {"base": base, "coldstart": model}, tok, texts, 64, batch_size=2)
    assert set(probe) == {"lm_nll", "lm_nll_increase_vs_base", "lm_kl_vs_base", "lm_nll_increase_vs_coldstart",
                          "lm_kl_vs_coldstart"}
    assert all(len(v) == 2 for v in probe.values())
    assert max(abs(x) for x in probe["lm_nll_increase_vs_coldstart"]) < 1e-6  # a model against itself
    assert min(probe["lm_kl_vs_base"]) > 0 and max(probe["lm_kl_vs_coldstart"]) < 1e-6
    # The same numbers as the generic per-token computation on one text at a time, without padding.
    one = lm_probe(model, {"base": base}, tok, texts[1:], 64, batch_size=1)
    assert one["lm_nll_increase_vs_base"][0] == pytest.approx(probe["lm_nll_increase_vs_base"][1], rel=1e-4)
    # Several models in one pass (evaluation's per-seed probe): each model's numbers exactly as scored alone.
    other = perturbed(base)
    refs = {"base": base, "coldstart": model}
    many = lm_probe_many({"coldstart": model, "sft": other, "base": base}, refs, tok, texts, 64, batch_size=2)
    assert many["coldstart"] == probe
    assert many["sft"] == lm_probe(other, refs, tok, texts, 64, batch_size=2)
    assert many["base"] == lm_probe(base, refs, tok, texts, 64, batch_size=2)
    assert max(many["base"]["lm_kl_vs_base"]) < 1e-6 and min(many["sft"]["lm_kl_vs_coldstart"]) > 0


def test_skill_items_are_multiple_choice_with_distinct_answers():
    pairs = [("猫哭耗子", "假慈悲"), ("竹篮打水", "一场空"), ("外甥打灯笼", "照舅"), ("泥菩萨过江", "自身难保"),
             ("黄鼠狼给鸡拜年", "没安好心")]
    items = skill_items(pairs, n=3, choices=4, seed=0)
    assert [x["riddle"] for x in items] == ["猫哭耗子", "竹篮打水", "外甥打灯笼"]
    for (riddle, answer), x in zip(pairs, items):
        assert len(x["choices"]) == len(set(x["choices"])) == 4 and x["choices"][x["answer_index"]] == answer
    assert items == skill_items(pairs, n=3, choices=4, seed=0)  # seeded
    assert {x["answer_index"] for x in skill_items(pairs, n=5, choices=4, seed=1)} != {0}  # answer not always first


def test_skill_probe_picks_the_choice_of_lowest_mean_nll(tiny):
    """The probe's verdict per item equals argmin over choices of the answer's mean token NLL, computed
    directly one unpadded sequence at a time."""
    base, tok, _ = tiny
    prompt = EvalConfig().skill_prompt
    pairs = [("猫哭耗子", "假慈悲"), ("竹篮打水", "一场空"), ("外甥打灯笼", "照舅舅"), ("泥菩萨过江", "自身难保")]
    items = skill_items(pairs, n=4, choices=3, seed=0)
    scores = skill_probe(base, tok, items, prompt, batch_size=5)  # batches cut across items
    assert len(scores) == 4 and set(scores) <= {0.0, 1.0}
    for x, score in zip(items, scores):
        head = tok.apply_chat_template([{"role": "user", "content": prompt.format(riddle=x["riddle"])}],
                                       add_generation_prompt=True, tokenize=False)
        h = tok(head, add_special_tokens=False)["input_ids"]
        nlls = []
        for option in x["choices"]:
            a = tok(option + tok.eos_token, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = F.log_softmax(base(torch.tensor([h + a])).logits[0, :-1].float(), -1)
            nlls.append(-logp[len(h) - 1:, :].gather(-1, torch.tensor(a).unsqueeze(-1)).mean().item())
        assert score == float(min(range(len(nlls)), key=nlls.__getitem__) == x["answer_index"])


def test_the_probe_tops_up_held_out_lines_with_cmrc_dev_contexts(smoke_repo, monkeypatch):
    """Held-out LM lines first, then distinct CMRC 2018 *dev* contexts, never trained on: the base's LM text
    (lm/zh.txt) holds no dev context."""
    from semrl.core.config import load_config
    from semrl.core.io import read_jsonl
    from semrl.evaluation.metrics import probe_texts

    monkeypatch.chdir(smoke_repo)
    cfg = load_config("params.yaml")
    texts, sources = probe_texts(cfg, 60)
    assert len(texts) == 60 == sum(sources.values()) and sources["cmrc_dev_contexts"] > 0
    assert len(set(texts)) == 60 and all(len(t) >= cfg.eval.lm_probe_min_chars for t in texts)
    contexts = {r["context"] for r in read_jsonl(smoke_repo / "data" / "prepared" / "general" / "cmrc_dev.jsonl")}
    lm_text = (smoke_repo / "data" / "prepared" / "lm" / "zh.txt").read_text(encoding="utf-8")
    assert set(texts[sources["heldout_lm_lines"]:]) <= contexts
    assert not any(c in lm_text for c in texts[sources["heldout_lm_lines"]:])
    cfg.eval.lm_probe_cmrc_contexts = False
    assert probe_texts(cfg, 60) == (texts[:sources["heldout_lm_lines"]],
                                    {"heldout_lm_lines": sources["heldout_lm_lines"], "cmrc_dev_contexts": 0})
