"""Reward functions on real examples with the smoke reward embedder; arithmetic, caching, registry."""
import numpy as np
import pytest

from semrl import SemrlError
from semrl.training.rewards import (
    ContrastiveSemanticReward,
    LanguageReward,
    SemanticReward,
    build_rewards,
    finite,
    rescale,
    score,
    tau_from_similarities,
)

from conftest import read_jsonl


@pytest.fixture(scope="module")
def data(smoke_repo):
    prepared = smoke_repo / "data" / "prepared"
    return {"mt": read_jsonl(prepared / "mt" / "dev.jsonl"), "hl": read_jsonl(prepared / "headline" / "dev.jsonl"),
            "embedder": smoke_repo / "models" / "embedder"}


@pytest.fixture(scope="module")
def semantic(data):
    return SemanticReward(data["embedder"], tau=0.0)


def test_identical_text_scores_high_and_unrelated_low(data, semantic):
    refs = [r["bo"] for r in data["mt"][:10]]
    unrelated = [r["title"] for r in data["hl"][:10]]  # Tibetan news headlines vs liturgical verse
    same = semantic(None, refs, reference=refs)
    other = semantic.similarity(unrelated, refs)
    assert min(same) > 0.99
    assert np.mean(other) < 0.5 and np.mean(other) < min(same) - 0.4
    strict = SemanticReward(semantic.model, tau=0.6)
    assert strict(None, unrelated, reference=refs) == [rescale(s, 0.6) for s in other]
    assert sum(strict(None, unrelated, reference=refs)) < sum(strict(None, refs, reference=refs))


def test_empty_completion_scores_zero(data, semantic):
    ref = data["mt"][0]["bo"]
    assert semantic(None, ["", "   "], reference=[ref, ref]) == [0.0, 0.0]
    assert LanguageReward("bo")(None, ["", " ། "]) == [0.0, 0.0]


def test_contrastive_semantic_reward_is_own_minus_other_references(data, semantic):
    refs = [r["bo"] for r in data["mt"][:3]]
    outs = [refs[0], refs[0][: len(refs[0]) // 2], "", refs[2]]
    own = [refs[0], refs[0], refs[1], refs[2]]  # two completions of the first prompt, one of each other
    contrast = ContrastiveSemanticReward(semantic.model)
    got = contrast(None, outs, reference=own)
    for i in (0, 1, 3):  # by hand: cosine to the own reference minus the mean cosine to the two others
        others = [r for r in refs if r != own[i]]
        expect = semantic.similarity([outs[i]], [own[i]])[0] - np.mean(semantic.similarity([outs[i]] * 2, others))
        assert got[i] == pytest.approx(expect, abs=1e-6)
    assert got[2] == 0.0  # empty
    assert got[0] > 0.3  # the exact reference is far closer to itself than to other verses
    # A text equally close to every reference gains nothing: the same text as every prompt's reference.
    assert contrast(None, [refs[0]] * 2, reference=[refs[0]] * 2) == pytest.approx(semantic.similarity([refs[0]], [refs[0]]) * 2)
    funcs, _ = build_rewards([{"name": "semantic_contrast", "weight": 1.5}], {"embedder": semantic.model, "tau": 0.3,
                                                                             "script": "bo", "reference_column": "reference"})
    assert funcs[0].__name__ == "semantic_contrast" and funcs[0](None, outs, reference=own) == got


def test_language_reward_on_real_text_and_mixed_script(data):
    bo, zh = data["mt"][0]["bo"], data["mt"][0]["zh"]
    lang = LanguageReward("bo")
    assert lang(None, [bo, zh, bo + " " + zh[:3], bo + " (BBC) 2015"]) == [1.0, 0.0, 0.0, 0.0]
    assert lang(None, [bo + " ༢༠༡༥ 2015 ། ,"]) == [1.0]  # digits and punctuation are allowed
    assert LanguageReward("zh")(None, [zh, bo]) == [1.0, 0.0]
    # conversational completions, as TRL passes them for chat datasets
    assert lang(None, [[{"role": "assistant", "content": bo}]]) == [1.0]


def test_language_reward_wants_mostly_target_script_letters():
    lang = LanguageReward("bo")  # min_share 0.5 by default, as params.yaml sets it
    date = "སྤྱི་ལོ་1950 ཟླ་བ་དང་པོའི་ཚེས་2"  # a real CLDR date: letters dominate, digits carried over
    assert lang(None, ["ཀ 123 !!!", "༄༅། 2015 ། ,", date]) == [0.0, 0.0, 1.0]
    assert LanguageReward("bo", min_share=0.0)(None, ["ཀ 123 !!!"]) == [1.0]  # the paper's rule alone
    with pytest.raises(SemrlError, match="min_share must be in"):
        LanguageReward("bo", min_share=1.5)


def test_tau_rescale_arithmetic():
    assert rescale(0.7, 0.4) == pytest.approx(0.5)
    assert rescale(0.4, 0.4) == 0.0 and rescale(0.1, 0.4) == 0.0 and rescale(-0.3, 0.0) == 0.0
    assert rescale(1.0, 0.4) == pytest.approx(1.0)
    assert rescale(0.55, 0.1) == pytest.approx(0.5)
    assert tau_from_similarities([0.1, 0.2, 0.3, 0.4, 0.5], 0.5) == pytest.approx(0.3)
    assert tau_from_similarities([0.1, 0.2, 0.3, 0.4, 0.5], 0.25) == pytest.approx(0.2)
    assert tau_from_similarities([-0.3, -0.1, 0.05], 0.5) == 0.0  # clipped: negative cosines earn nothing
    with pytest.raises(SemrlError, match="no cold-start similarities"):
        tau_from_similarities([], 0.5)
    from pydantic import ValidationError

    from semrl.core.config import RewardsConfig

    assert RewardsConfig(tau=0.35).tau == 0.35 and RewardsConfig(tau="auto").tau == "auto"
    for bad in (1.0, -0.1, "median"):
        with pytest.raises(ValidationError):
            RewardsConfig(tau=bad)
    with pytest.raises(SemrlError, match=r"tau must be in \[0, 1\)"):
        SemanticReward(object(), tau=1.0)


def test_reference_cache_gives_identical_values(data, semantic):
    refs = [r["bo"] for r in data["mt"][:6] for _ in range(4)]  # G = 4 copies of each reference, as in GRPO
    completions = [r[: len(r) // 2 + i] for i, r in enumerate(refs)]
    cached, uncached = SemanticReward(semantic.model, 0.2), SemanticReward(semantic.model, 0.2, cache=False)
    first = cached(None, completions, reference=refs)
    assert len(cached.cache) == 6
    assert first == cached(None, completions, reference=refs)  # second call served from the cache
    assert np.allclose(first, uncached(None, completions, reference=refs), atol=1e-6)


def short_is_good(prompts, completions, **columns):
    """A custom reward plugged in by dotted path (the registry's extension point)."""
    return [1.0 / (1 + len(c)) for c in completions]


def test_registry_builds_paper_reward_and_plugins(data):
    ctx = {"embedder": data["embedder"], "tau": 0.1, "script": "bo", "reference_column": "reference"}
    funcs, weights = build_rewards([{"name": "semantic", "weight": 1.5}, {"name": "language", "weight": 1.0},
                                    {"name": "test_rewards.short_is_good", "weight": 0.5},
                                    {"name": "bleu"}, {"name": "chrf"}], ctx)
    assert [f.__name__ for f in funcs] == ["semantic", "language", "short_is_good", "bleu", "chrf"]
    assert weights == [1.5, 1.0, 0.5, 1.0, 1.0]
    refs = [r["bo"] for r in data["mt"][:3]]
    out = score(funcs, weights, [None] * 3, refs, reference=refs, prompt_id=[1, 2, 3])  # extra columns are fine
    assert out["semantic"] == pytest.approx([1.0] * 3, abs=1e-5) and out["language"] == [1.0] * 3
    assert out["bleu"] == pytest.approx([1.0] * 3) and out["chrf"] == pytest.approx([1.0] * 3)
    expected_total = [1.5 * s + 1.0 * lang + 0.5 * c + b + ch for s, lang, c, b, ch in
                      zip(out["semantic"], out["language"], out["short_is_good"], out["bleu"], out["chrf"])]
    assert out["total"] == pytest.approx(expected_total)
    zh = [r["zh"] for r in data["mt"][:3]]
    assert max(score(funcs[3:], [1, 1], [None] * 3, zh, reference=refs)["bleu"]) < 0.05


def test_trl_rewards_plug_in_as_trl_calls_them(data):
    """TRL's own reward functions (here its n-gram repetition penalty, from options) take keyword arguments
    such as completion_ids: built from a dotted path, wrapped by the NaN guard and scored, as in training."""
    ctx = {"embedder": data["embedder"], "tau": 0.0, "script": "bo", "reference_column": "reference"}
    funcs, weights = build_rewards([{"name": "language"}, {"name": "trl.rewards.get_repetition_penalty_reward",
                                                           "weight": 2.0, "ngram_size": 2},
                                    {"name": "trl.rewards.get_repetition_penalty_reward"},  # its defaults
                                    {"name": "repetition", "weight": 1.0}], ctx)  # registered: the same, renamed
    funcs = [finite(f) for f in funcs]
    ids = [[1, 2, 3, 4], [5, 5, 5, 5, 5]]
    text = [data["mt"][0]["bo"]] * 2
    assert [f.__name__ for f in funcs] == ["language"] + ["repetition_penalty_reward"] * 2 + ["repetition"]
    values = [f(prompts=[None] * 2, completions=text, reference=text, completion_ids=ids) for f in funcs]
    assert values[1] == pytest.approx([0.0, -0.75])  # 3 of 4 bigrams repeat
    assert values[2] == values[3] == pytest.approx([0.0, -2 / 3])  # trigrams: 2 of 3 repeat
    assert score(funcs[:2], weights[:2], [None] * 2, text, reference=text, completion_ids=ids)["total"] == \
        pytest.approx([1.0, 1.0 - 1.5])


def test_registry_errors_are_clear(data):
    ctx = {"embedder": data["embedder"], "tau": 0.0, "script": "bo", "reference_column": "reference"}
    with pytest.raises(SemrlError, match="unknown reward 'semantc'; known: semantic, language, bleu, chrf"):
        build_rewards([{"name": "semantc"}], ctx)
    with pytest.raises(SemrlError, match="cannot import"):
        build_rewards([{"name": "no_such_module.reward"}], ctx)
    with pytest.raises(SemrlError, match="script must be 'bo' or 'zh'"):
        build_rewards([{"name": "language", "script": "en"}], ctx)
    funcs, _ = build_rewards([{"name": "semantic", "reference_column": "target"}], ctx)
    with pytest.raises(SemrlError, match="column 'target' missing"):
        funcs[0](None, ["ཀ"], reference=["ཀ"])


def test_reward_diagnostics_split_what_the_input_decides_from_what_it_does_not():
    """Known cases: a group whose reward is constant has no spread (its advantages are all zero); a group whose
    variation is all in g(y) (input-independent) adds to g's share, one whose variation is all in h to h's."""
    from semrl.training.tau import reward_diagnostics

    flat = ([1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5])
    all_g = ([0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0])  # R = g: the input changes nothing
    all_h = ([0.0, 1.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5])  # g constant: every difference is the input's
    assert reward_diagnostics([flat, all_g, all_h]) == {"zero_spread_groups": round(1 / 3, 4),
                                                        "input_dependent_share": 0.5}
    assert reward_diagnostics([all_h])["input_dependent_share"] == 1.0
    assert reward_diagnostics([all_g])["input_dependent_share"] == 0.0
    assert reward_diagnostics([flat]) == {"zero_spread_groups": 1.0, "input_dependent_share": None}


def test_the_language_reward_is_input_independent_and_chrf_is_not():
    """g(y), the reward against other prompts' references: the language reward pays the same whatever the
    input (h = 0 exactly); chrF against the own reference is mostly the input's (copying the reference)."""
    from semrl.training.rewards import build_rewards, score
    from semrl.training.tau import input_independent_part, reward_diagnostics

    refs = ["བོད་ཀྱི་ལོ་རྒྱུས།", "ཟླ་བ་གཉིས་པའི་ཚེས་༢༡", "སློབ་གྲྭ་ཆེན་པོ།", "རི་བོ་དང་མཚོ།", "མི་རིགས་ཀྱི་སྐད་ཡིག",
            "ཉི་མ་ཤར་བ།"]
    rows = [{"prompt": f"p{i}", "input": f"in{i}", "reference": ref, "source": "s"} for i, ref in enumerate(refs)
            for _ in range(2)]
    outs = [x for ref in refs for x in (ref, "abc")]  # per group: the own reference, then a text in another script
    columns = {"reference": [x["reference"] for x in rows], "input": [x["input"] for x in rows],
               "completion_ids": [[0]] * len(rows)}
    for name, share in (("language", 0.0), ("chrf", None)):
        funcs, weights = build_rewards([{"name": name}], {"script": "bo", "reference_column": "reference"})
        reward = score(funcs, weights, [x["prompt"] for x in rows], outs, **columns)["total"]
        general = input_independent_part(funcs, weights, rows, outs, columns, "reference", 2)
        groups = [(reward[i:i + 2], general[i:i + 2]) for i in range(0, len(rows), 2)]
        found = reward_diagnostics(groups)["input_dependent_share"]
        if share is not None:
            assert general == reward and found == share
        else:
            assert found > 0.8, found  # the own reference scores 1, against the others far less
