"""Qwen3's chat template on CPU: the smoke model's tokenizer with the real Qwen3 template (TRL ships it;
`<think>` is plain text, not a special token) through SFT data, GRPO prompts and rewards, generation and
the CMRC/skill probes — thinking off everywhere, and no thinking block reaches a reward or a metric."""
from pathlib import Path

import pytest
import trl
from transformers import AutoModelForCausalLM, AutoTokenizer

from semrl.core.methods import get_method
from semrl.evaluation.metrics import answer_batches, item_scores, skill_probe
from semrl.models.chat import THINK_CLOSE, THINK_OPEN, render_prompts, strip_thinking, template_kwargs
from semrl.models.generation import generate
from semrl.training.rewards import LanguageReward, SemanticReward, completion_text
from semrl.training.trainers import make_trainer, method_items

QWEN3_TEMPLATE = (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
EMPTY_THINK = THINK_OPEN + "\n\n" + THINK_CLOSE + "\n\n"


@pytest.fixture(scope="module")
def qwen3(smoke_mt):
    cfg, task, init, _ = smoke_mt
    tokenizer = AutoTokenizer.from_pretrained(init)  # its own copy: the template below is Qwen3's
    tokenizer.chat_template = QWEN3_TEMPLATE
    return cfg, task, init, tokenizer


def test_the_template_has_the_switch_and_think_tags_are_plain_text(qwen3):
    tokenizer = qwen3[3]
    assert template_kwargs(tokenizer) == {"enable_thinking": False}
    assert THINK_OPEN not in tokenizer.all_special_tokens
    ids = tokenizer(THINK_OPEN + "བོད", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True).startswith(THINK_OPEN)  # survives decoding
    # Without the switch the generation prompt stays open for thinking; with it the block is closed.
    raw = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True,
                                        tokenize=False)
    assert raw.endswith("<|im_start|>assistant\n")
    assert render_prompts(tokenizer, ["你好"])[0] == raw + EMPTY_THINK
    # The tiny tokenizer's own template has no switch: nothing extra is passed to it.
    assert template_kwargs(AutoTokenizer.from_pretrained(qwen3[2])) == {}


def test_sft_examples_put_the_empty_think_block_in_the_prompt(qwen3, tmp_path):
    cfg, task, init, tokenizer = qwen3
    method = get_method(cfg, "coldstart")
    items = method_items(cfg, method, task.examples("train", tokenizer, cfg.train.max_input_tokens), 0)[:4]
    trainer = make_trainer(cfg, task, method, 0, items, init, tmp_path / "ckpt", tokenizer, None)
    for row, item in zip(trainer.train_dataset, items):
        ids, labels = row["input_ids"], row["labels"]  # -100: not a target (TRL 1.16 builds labels)
        prompt = tokenizer.decode([t for t, y in zip(ids, labels) if y == -100])
        completion = tokenizer.decode([t for t, y in zip(ids, labels) if y != -100])
        assert prompt.endswith(EMPTY_THINK)  # thinking off: the block is context, never a target
        assert completion.startswith(item["reference"]) and THINK_OPEN not in completion


def test_grpo_renders_prompts_without_thinking_and_rewards_ignore_a_think_block(qwen3, tmp_path):
    from trl.data_utils import maybe_apply_chat_template

    cfg, task, init, tokenizer = qwen3
    method = get_method(cfg, "grpo")
    items = method_items(cfg, method, task.examples("train", tokenizer, cfg.train.max_input_tokens), 0)[:8]
    trainer = make_trainer(cfg, task, method, 0, items, init, tmp_path / "ckpt", tokenizer, 0.1)
    assert trainer.chat_template_kwargs == {"enable_thinking": False}
    prompt = maybe_apply_chat_template({"prompt": trainer.train_dataset[0]["prompt"]}, tokenizer,
                                       **trainer.chat_template_kwargs)["prompt"]
    assert prompt.endswith(EMPTY_THINK)
    # Rewards see the completion without a thinking block: a clean Tibetan answer is in the target script.
    bo = items[0]["reference"]
    lang = LanguageReward("bo")
    for completion in (bo, EMPTY_THINK + bo, [{"role": "assistant", "content": THINK_OPEN + "\nok\n" + THINK_CLOSE + bo}]):
        assert completion_text(completion) == bo
        assert lang(None, [completion]) == [1.0]
    assert lang(None, [THINK_OPEN + bo]) == [0.0]  # an unclosed block is all thinking: nothing answered
    semantic = SemanticReward(cfg.embedder.reward.out_dir)
    assert semantic.similarity([EMPTY_THINK + bo], [bo]) == pytest.approx(semantic.similarity([bo], [bo]))
    assert item_scores("chrf", [strip_thinking(EMPTY_THINK + bo)], [bo], "bo") == [pytest.approx(1.0)]


def test_generation_and_probes_render_with_thinking_off(qwen3):
    cfg, task, init, tokenizer = qwen3
    model = AutoModelForCausalLM.from_pretrained(init)
    outs = generate(model, tokenizer, ["把下面的中文翻译成藏文：\n你好"] * 2, 6)
    assert len(outs) == 2 and not any(o.lstrip().startswith(THINK_OPEN) for o in outs)
    items = [{"context": "北京是中国的首都。", "question": "中国的首都是哪里？", "answers": ["北京"]}]
    ids, attn, mask = next(answer_batches(tokenizer, items, cfg.eval.cmrc_prompt, 64, 1))
    n = int(mask[0].sum())
    assert tokenizer.decode(ids[0][mask[0].bool()]) == "北京"
    assert tokenizer.decode(ids[0][: int(attn[0].sum()) - n]).endswith(EMPTY_THINK)  # the answer follows the block
    riddle = [{"riddle": "外甥打灯笼", "choices": ["照舅", "白费", "多余", "不通"], "answer_index": 0}]
    assert len(skill_probe(model, tokenizer, riddle, cfg.eval.skill_prompt, 4)) == 1


def test_strip_thinking_cases():
    assert strip_thinking("བོད") == "བོད"
    assert strip_thinking("  <think>\nx\n</think>\n\nབོད") == "བོད"
    assert strip_thinking("<think>unfinished") == ""
    assert strip_thinking("བོད <think>x</think>") == "བོད <think>x</think>"  # only a leading block


def test_generation_stops_on_every_eos_id_of_the_generation_config():
    """Qwen3's generation config ends a completion on <|im_end|> (151645) or <|endoftext|> (151643), its
    tokenizer names only the first: both stop a completion, the tokenizer's first (it pads when no pad is set)."""
    from types import SimpleNamespace as NS

    from semrl.models.generation import eos_ids

    qwen3 = NS(generation_config=NS(eos_token_id=[151645, 151643]))
    assert eos_ids(qwen3, NS(eos_token_id=151645)) == [151645, 151643]
    assert eos_ids(NS(generation_config=NS(eos_token_id=2)), NS(eos_token_id=2)) == [2]  # the tiny base: one id
    assert eos_ids(NS(), NS(eos_token_id=7)) == [7]
    with pytest.raises(ValueError, match="no end-of-sequence token"):
        eos_ids(NS(generation_config=NS(eos_token_id=None)), NS(eos_token_id=None))
