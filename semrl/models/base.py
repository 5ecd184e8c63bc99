"""DVC stage `base`: the base causal LM. Tiny profile: a Qwen3-architecture model pretrained from scratch
on general Chinese plus a small Tibetan share, with its own tokenizer. Paper profile: a named model
(`Qwen/Qwen3-4B`) resolved, not trained. Either way later stages load it with `load_base(models/base)`."""
from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

from semrl import SemrlError
from semrl.core.checkpoints import last_complete_checkpoint, require_whole_model, step_of
from semrl.core.config import ArchConfig, BaseConfig, Config
from semrl.models.chat import render
from semrl.core.io import atomic_write_text, read_jsonl

SOURCE_FILE = "source.json"  # written instead of weights when the base is a named model


# ---------------------------------------------------------------- loading (every later stage)


def base_reference(path: str | Path) -> dict[str, Any]:
    """What `from_pretrained` should load for a base folder: the folder itself, or the named model it points to."""
    path = Path(path)
    if (path / SOURCE_FILE).is_file():
        return json.loads((path / SOURCE_FILE).read_text(encoding="utf-8"))
    if not (path / "config.json").is_file():
        raise SemrlError(f"{path}: no base model here (run `dvc repro base`)")
    return {"model": str(path), "revision": None, "trust_remote_code": False}


def load_base(path: str | Path, **model_kwargs):
    """(model, tokenizer) from a base folder; safetensors only, remote code only if the profile asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = base_reference(path)
    if Path(ref["model"]).is_dir():
        require_whole_model(ref["model"], "base")
    common = {"revision": ref.get("revision"), "trust_remote_code": bool(ref.get("trust_remote_code"))}
    tokenizer = AutoTokenizer.from_pretrained(ref["model"], **common)
    model = AutoModelForCausalLM.from_pretrained(ref["model"], use_safetensors=True, **common, **model_kwargs)
    return model, tokenizer


# ---------------------------------------------------------------- the stage


def run(config: Config) -> dict[str, Any]:
    b = config.base
    metrics = resolve_named(b, b.out_dir) if b.pretrained else pretrain_tiny(config, b.out_dir)
    atomic_write_text(b.metrics_file, json.dumps(metrics, indent=2) + "\n")
    return metrics


def qwen3_config(arch: ArchConfig, vocab_size: int, **token_ids: int | None):
    """The tiny base's Qwen3 architecture (pretraining builds it; `semrl check` inspects it)."""
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=vocab_size, hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
                       num_hidden_layers=arch.num_hidden_layers, num_attention_heads=arch.num_attention_heads,
                       num_key_value_heads=arch.num_key_value_heads, head_dim=arch.head_dim,
                       max_position_embeddings=arch.max_position, tie_word_embeddings=True, **token_ids)


def resolve_named(b: BaseConfig, out: Path) -> dict[str, Any]:
    """Paper profile: check the named model's config resolves and is a causal LM; record the reference."""
    from transformers import AutoConfig

    ref = {"model": b.pretrained, "revision": b.revision, "trust_remote_code": b.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(ref["model"], revision=ref["revision"],
                                            trust_remote_code=ref["trust_remote_code"])
    except (OSError, ValueError) as e:
        raise SemrlError(f"base.pretrained {ref['model']!r}: cannot resolve ({str(e).splitlines()[0]})") from None
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise SemrlError(f"base.pretrained {ref['model']!r}: not a causal LM (architectures {archs})")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SOURCE_FILE, json.dumps({**ref, "architectures": archs}, indent=2) + "\n")
    return {"source": ref["model"], "model_type": config.model_type}


def lm_split(config: Config, lang: str) -> tuple[list[str], list[str]]:
    """(train, held-out) lines of the prepared `lm/<lang>.txt`: the tiny base pretrains on the first and
    never sees the second; its perplexity and the alignment-tax LM probe (evaluation) read the held-out."""
    t = config.base.train
    lines = (config.prepare.out_dir / "lm" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
    return _split_lines(lines, t.heldout_frac, t.seed)


def _split_lines(lines: list[str], frac: float, seed: int) -> tuple[list[str], list[str]]:
    idx = list(range(len(lines)))
    random.Random(seed).shuffle(idx)
    n = max(1, round(frac * len(lines)))
    held = set(idx[:n])
    return [x for i, x in enumerate(lines) if i not in held], [x for i, x in enumerate(lines) if i in held]


def pretraining_texts(config: Config) -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    """((zh train, zh held-out), (bo train, bo held-out)) lines of the tiny base's language modelling."""
    zh, (bo_train, bo_held) = lm_split(config, "zh"), lm_split(config, "bo")
    if config.base.train.bo_headline_bodies:  # more Tibetan: news bodies of the headline *train* split only
        bo_train = bo_train + [r["body"] for r in read_jsonl(config.prepare.out_dir / "headline" / "train.jsonl")]
    return zh, (bo_train, bo_held)


def skill_pairs(config: Config) -> list[tuple[str, str]]:
    """(riddle, answer) of the xiehouyu among the base's LM *training* lines, seed-shuffled; the first
    `base.train.skill_riddles` are the general skill the tiny base is taught in chat format and the
    evaluation's skill probe asks (knowledge the base has, which later training can erode)."""
    sep = config.prepare.lm.xiehouyu_separator
    pairs = []
    for line in lm_split(config, "zh")[0]:
        riddle, found, answer = line.partition(sep)
        if found and riddle.strip() and answer.strip() and sep not in answer:
            pairs.append((riddle.strip(), answer.strip()))
    random.Random(config.base.train.seed).shuffle(pairs)
    return pairs


def skill_documents(tokenizer, pairs: list[tuple[str, str]], prompt: str) -> list[str]:
    """Riddle -> answer as one chat exchange each, as the tokenizer's chat template writes it."""
    return render(tokenizer, [[{"role": "user", "content": prompt.format(riddle=r)}, {"role": "assistant", "content": a}]
                              for r, a in pairs], add_generation_prompt=False)


def pack(tokenizer, texts: list[str], seq_len: int) -> list[list[int]]:
    """Concatenate documents (each ended by EOS) and cut into full blocks of seq_len tokens."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    return [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


class _Blocks:
    """A map-style dataset of token blocks for causal-LM training (labels = inputs; the model shifts)."""

    def __init__(self, blocks: list[list[int]]):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        ids = torch.tensor(self.blocks[i])
        return {"input_ids": ids, "labels": ids.clone()}


def tokenizer_corpus(prepared: Path, zh_train: list[str], bo_train: list[str], include_task_train: bool) -> list[str]:
    """Text the tokenizer learns from: the LM text plus (optionally) the task *training* splits, never dev/test."""
    texts = zh_train + bo_train
    if include_task_train:
        texts += [t for r in read_jsonl(prepared / "mt" / "train.jsonl") for t in (r["zh"], r["bo"])]
        texts += [t for r in read_jsonl(prepared / "headline" / "train.jsonl") for t in (r["title"], r["body"])]
    return texts


def pretrain_tiny(config: Config, out: Path) -> dict[str, Any]:
    import mlflow
    import torch
    from transformers import Qwen3ForCausalLM, Trainer, TrainingArguments

    from semrl.core import tracking
    from semrl.models.tokenizer import tokens_per_syllable, train_tokenizer

    b, t = config.base, config.base.train
    prepared = config.prepare.out_dir
    seed = t.seed
    (zh_train, zh_held), (bo_train, bo_held) = pretraining_texts(config)

    tok_cfg = b.tokenizer
    tokenizer = train_tokenizer(tokenizer_corpus(prepared, zh_train, bo_train, tok_cfg.include_task_train),
                                tok_cfg.vocab_size, tok_cfg.min_frequency)
    seq_len = t.seq_len
    zh_blocks, bo_blocks = pack(tokenizer, zh_train, seq_len), pack(tokenizer, bo_train, seq_len)
    if not zh_blocks:
        raise SemrlError(f"{prepared / 'lm' / 'zh.txt'}: not enough text for one block of {seq_len} tokens")
    # Tibetan blocks make up bo_share of the training blocks: a little Tibetan, as a general model has.
    rng = random.Random(seed)
    n_bo = round(t.bo_share / (1 - t.bo_share) * len(zh_blocks)) if bo_blocks else 0
    train_blocks = zh_blocks + [rng.choice(bo_blocks) for _ in range(n_bo)]
    # The general skill (evaluation's skill probe): riddle -> answer in chat format, skill_share of all blocks.
    n_skill = 0
    if t.skill_share > 0:
        taught = skill_pairs(config)[: t.skill_riddles]
        skill_blocks = pack(tokenizer, skill_documents(tokenizer, taught, config.eval.skill_prompt), seq_len)
        if not skill_blocks:
            raise SemrlError(f"{prepared / 'lm' / 'zh.txt'}: no xiehouyu lines to teach the skill probe")
        n_skill = round(t.skill_share / (1 - t.skill_share) * len(train_blocks))
        train_blocks += [rng.choice(skill_blocks) for _ in range(n_skill)]
    rng.shuffle(train_blocks)

    arch = qwen3_config(b.arch, len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(arch)
    n_params = sum(p.numel() for p in model.parameters())

    # Checkpoints live outside the DVC output, keyed by the exact config, so a killed run resumes and a
    # changed config never resumes a stale one.
    key = hashlib.sha256(json.dumps([b.model_dump(mode="json"), tracking.data_version(), config.eval.skill_prompt],
                                    sort_keys=True).encode()).hexdigest()[:12]
    ckpt_dir = b.checkpoint_dir / f"base-{key}"
    args = TrainingArguments(
        output_dir=str(ckpt_dir), max_steps=t.steps, per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size, learning_rate=t.lr, lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps, save_steps=t.save_steps,
        save_total_limit=2, report_to=[], seed=seed, bf16=t.bf16, fp16=False,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Blocks(train_blocks),
                      callbacks=[tracking.metrics_callback()])
    last = last_complete_checkpoint(ckpt_dir)
    with tracking.run(config, "base-tiny", tags={"semrl.stage": "base"},
                      log_params={"base": b.model_dump(mode="json")}):
        result = trainer.train(resume_from_checkpoint=last)
        metrics = {
            "n_params": n_params, "vocab_size": len(tokenizer), "train_blocks_zh": len(zh_blocks),
            "train_blocks_bo": n_bo, "train_blocks_skill": n_skill, "train_tokens_seen": t.steps * t.batch_size * seq_len,
            # The last logged loss, from the run's whole history (restored on resume): Trainer's own
            # training_loss averages only the steps of this invocation, so a resumed run reported another.
            "train_loss": round([h["loss"] for h in trainer.state.log_history if "loss" in h][-1], 4),
            "tokens_per_bo_syllable": round(tokens_per_syllable(tokenizer, bo_held[:50] or bo_train[:50]), 3),
        }
        for lang, held in (("zh", zh_held), ("bo", bo_held)):
            blocks = pack(tokenizer, held, seq_len)
            if blocks:
                loss = trainer.evaluate(_Blocks(blocks), metric_key_prefix=f"heldout_{lang}")[f"heldout_{lang}_loss"]
                metrics[f"heldout_ppl_{lang}"] = round(math.exp(loss), 2)
        # How this invocation ran (wall time, where it resumed) goes to MLflow only: the metrics file holds
        # results, which a fresh and a resumed run must report alike (`dvc metrics diff` compares them).
        mlflow.log_metrics({**{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                            "train_seconds": round(result.metrics["train_runtime"], 1),
                            "resumed_from_step": step_of(last)})
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        mlflow.log_artifacts(str(out), artifact_path="model")
    return metrics
