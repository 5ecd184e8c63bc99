"""The rehearsal profile's models (configs/rehearsal.yaml): random-weight Qwen3s shaped like the real one where
the code depends on it — the 151,936-row tied embedding, Qwen3's special tokens at Qwen3's ids (eos 151645 and
151643, `<think>` 151667 as plain text), its chat template, its generation config (sampling defaults that a
greedy decode must override), bf16 weights in safetensors — and tiny everywhere else (hidden 64, 2 layers).
They are reached through base.pretrained / eval.judge.model like a hub model, so the paper's named-base path
runs end to end on a CPU. Written by `python -m semrl.models.rehearsal` (make run PROFILE=rehearsal does it)."""
from __future__ import annotations

import json
from pathlib import Path

QWEN3_VOCAB = 151_936  # the embedding's rows (Qwen3-4B's config.json); the tokenizer's ids end at 151,668
QWEN3_FIRST_ADDED = 151_643
# Qwen3's added tokens in id order from 151,643 (its tokenizer_config.json): (content, special)
QWEN3_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
               ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
               ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
               ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
               ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
               ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False),
               ("</tool_response>", False), ("<think>", False), ("</think>", False)]
ENDOFTEXT, IM_END = 151_643, 151_645
# Qwen3-4B's generation_config.json: sampling by default; evaluation's greedy decoding must override it
QWEN3_GENERATION = {"bos_token_id": ENDOFTEXT, "eos_token_id": [IM_END, ENDOFTEXT], "pad_token_id": ENDOFTEXT,
                    "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}
DEFAULT_DIR = Path("models/rehearsal")


def qwen3_tokenizer(texts: list[str], merges_vocab: int = 4000):
    """A byte-level BPE learnt on `texts` (Tibetan-aware pre-tokenisation, as the tiny tokenizer), its ids
    padded with unreachable reserved entries up to 151,643 and Qwen3's added tokens after them, with Qwen3's
    chat template (thinking switch included)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    import trl
    from semrl.models.tokenizer import train_tokenizer

    learnt = json.loads(train_tokenizer(texts, merges_vocab).backend_tokenizer.to_str())
    learnt["added_tokens"] = []  # the tiny tokenizer's three specials: Qwen3's own go at Qwen3's ids
    vocab = {t: i for t, i in learnt["model"]["vocab"].items() if not t.startswith("<|")}
    ordered = sorted(vocab, key=vocab.get)
    vocab = {t: i for i, t in enumerate(ordered)}
    vocab.update({f"<|reserved_{i}|>": i for i in range(len(vocab), QWEN3_FIRST_ADDED)})
    learnt["model"]["vocab"] = vocab
    learnt["added_tokens"] = [{"id": QWEN3_FIRST_ADDED + i, "content": c, "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": special}
                              for i, (c, special) in enumerate(QWEN3_ADDED)]
    template = (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text(encoding="utf-8")
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(learnt)), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=template, model_max_length=131_072,
                                   padding_side="left")


def qwen3_model(seed: int, layers: int = 2, hidden: int = 64):
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(vocab_size=QWEN3_VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         tie_word_embeddings=True, max_position_embeddings=40_960, rope_theta=1_000_000.0,
                         bos_token_id=ENDOFTEXT, eos_token_id=IM_END, pad_token_id=ENDOFTEXT, dtype="bfloat16")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def write(out: Path, texts: list[str], seed: int = 0, layers: int = 2) -> Path:
    """A random-weight Qwen3 folder as the hub has it: config, bf16 safetensors, tokenizer, generation config."""
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    qwen3_model(seed, layers).save_pretrained(out, safe_serialization=True)
    GenerationConfig(**QWEN3_GENERATION).save_pretrained(out)
    qwen3_tokenizer(texts).save_pretrained(out)
    return out


def corpus_texts(prepared: Path, limit: int = 4000) -> list[str]:
    """Tokenizer training text: the prepared task data's inputs and references (both languages)."""
    texts = []
    for path in sorted(prepared.glob("*/train.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines()[:limit]:
            row = json.loads(line)
            texts += [str(v) for k, v in row.items() if isinstance(v, str) and k not in ("id", "source")]
    return texts


def main(out: Path = DEFAULT_DIR, prepared: Path = Path("data/prepared")) -> None:
    """models/rehearsal/{base,judge}: the policy's base and the local judge (3 layers: another size). Written
    once: a run that started from them stays valid."""
    for name, seed, layers in (("base", 0, 2), ("judge", 1, 3)):
        if (out / name / "model.safetensors").is_file():
            print(f"rehearsal: {out / name} exists")
            continue
        texts = corpus_texts(prepared)
        if not texts:
            raise SystemExit(f"{prepared}: no prepared train data to learn the rehearsal tokenizer from; run "
                             "`dvc repro prepare` first")
        print(f"rehearsal: {write(out / name, texts, seed, layers)} (random Qwen3, {layers} layers, "
              f"vocabulary {QWEN3_VOCAB:,})")


if __name__ == "__main__":
    import sys

    main(*(Path(a) for a in sys.argv[1:3]))
