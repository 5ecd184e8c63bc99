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
from semrl.checkpoints import last_complete_checkpoint, step_of
from semrl.io import atomic_write_text, read_jsonl

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
    common = {"revision": ref.get("revision"), "trust_remote_code": bool(ref.get("trust_remote_code"))}
    tokenizer = AutoTokenizer.from_pretrained(ref["model"], **common)
    model = AutoModelForCausalLM.from_pretrained(ref["model"], use_safetensors=True, **common, **model_kwargs)
    return model, tokenizer


# ---------------------------------------------------------------- the stage


def run(params: dict[str, Any]) -> dict[str, Any]:
    b = params["base"]
    out = Path(b["out_dir"])
    metrics = resolve_named(b, out) if b.get("pretrained") else pretrain_tiny(params, out)
    atomic_write_text(b["metrics_file"], json.dumps(metrics, indent=2) + "\n")
    return metrics


def resolve_named(b: dict[str, Any], out: Path) -> dict[str, Any]:
    """Paper profile: check the named model's config resolves and is a causal LM; record the reference."""
    from transformers import AutoConfig

    ref = {"model": b["pretrained"], "revision": b.get("revision"),
           "trust_remote_code": bool(b.get("trust_remote_code"))}
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


def _split_lines(lines: list[str], frac: float, seed: int) -> tuple[list[str], list[str]]:
    idx = list(range(len(lines)))
    random.Random(seed).shuffle(idx)
    n = max(1, round(frac * len(lines)))
    held = set(idx[:n])
    return [x for i, x in enumerate(lines) if i not in held], [x for i, x in enumerate(lines) if i in held]


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


def pretrain_tiny(params: dict[str, Any], out: Path) -> dict[str, Any]:
    import mlflow
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Trainer, TrainingArguments

    from semrl import tracking
    from semrl.tokenizer import tokens_per_syllable, train_tokenizer

    b, t = params["base"], params["base"]["train"]
    prepared = Path(params["prepare"]["out_dir"])
    seed = int(t["seed"])
    zh = (prepared / "lm" / "zh.txt").read_text(encoding="utf-8").splitlines()
    bo = (prepared / "lm" / "bo.txt").read_text(encoding="utf-8").splitlines()
    zh_train, zh_held = _split_lines(zh, t["heldout_frac"], seed)
    bo_train, bo_held = _split_lines(bo, t["heldout_frac"], seed)

    tok_cfg = b["tokenizer"]
    tokenizer = train_tokenizer(tokenizer_corpus(prepared, zh_train, bo_train, tok_cfg["include_task_train"]),
                                tok_cfg["vocab_size"], tok_cfg["min_frequency"])
    seq_len = int(t["seq_len"])
    zh_blocks, bo_blocks = pack(tokenizer, zh_train, seq_len), pack(tokenizer, bo_train, seq_len)
    if not zh_blocks:
        raise SemrlError(f"{prepared / 'lm' / 'zh.txt'}: not enough text for one block of {seq_len} tokens")
    # Tibetan blocks make up bo_share of the training blocks: a little Tibetan, as a general model has.
    rng = random.Random(seed)
    n_bo = round(t["bo_share"] / (1 - t["bo_share"]) * len(zh_blocks)) if bo_blocks else 0
    train_blocks = zh_blocks + [rng.choice(bo_blocks) for _ in range(n_bo)]
    rng.shuffle(train_blocks)

    a = b["arch"]
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=a["hidden_size"], intermediate_size=a["intermediate_size"],
        num_hidden_layers=a["num_hidden_layers"], num_attention_heads=a["num_attention_heads"],
        num_key_value_heads=a["num_key_value_heads"], head_dim=a["head_dim"], max_position_embeddings=a["max_position"],
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())

    # Checkpoints live outside the DVC output, keyed by the exact config, so a killed run resumes and a
    # changed config never resumes a stale one.
    key = hashlib.sha256(json.dumps([b, tracking.data_version()], sort_keys=True).encode()).hexdigest()[:12]
    ckpt_dir = Path(b["checkpoint_dir"]) / f"base-{key}"
    args = TrainingArguments(
        output_dir=str(ckpt_dir), max_steps=int(t["steps"]), per_device_train_batch_size=int(t["batch_size"]),
        per_device_eval_batch_size=int(t["batch_size"]), learning_rate=float(t["lr"]),
        lr_scheduler_type="cosine", warmup_steps=int(t["warmup_steps"]), weight_decay=float(t["weight_decay"]),
        max_grad_norm=1.0, logging_steps=int(t["logging_steps"]), save_steps=int(t["save_steps"]),
        save_total_limit=1, report_to=[], seed=seed, bf16=bool(t["bf16"]), fp16=False,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Blocks(train_blocks),
                      callbacks=[tracking.metrics_callback()])
    last = last_complete_checkpoint(ckpt_dir)
    with tracking.run(params, "base-tiny", tags={"semrl.stage": "base"}, log_params={"base": b}):
        result = trainer.train(resume_from_checkpoint=last)
        metrics = {
            "n_params": n_params, "vocab_size": len(tokenizer), "train_blocks_zh": len(zh_blocks),
            "train_blocks_bo": n_bo, "train_tokens_seen": int(t["steps"]) * int(t["batch_size"]) * seq_len,
            "train_loss": round(result.training_loss, 4), "train_seconds": round(result.metrics["train_runtime"], 1),
            "resumed_from_step": step_of(last),
            "tokens_per_bo_syllable": round(tokens_per_syllable(tokenizer, bo_held[:50] or bo_train[:50]), 3),
        }
        for lang, held in (("zh", zh_held), ("bo", bo_held)):
            blocks = pack(tokenizer, held, seq_len)
            if blocks:
                loss = trainer.evaluate(_Blocks(blocks), metric_key_prefix=f"heldout_{lang}")[f"heldout_{lang}_loss"]
                metrics[f"heldout_ppl_{lang}"] = round(math.exp(loss), 2)
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        mlflow.log_artifacts(str(out), artifact_path="model")
    return metrics
