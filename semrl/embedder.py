"""DVC stage `embedder`: the frozen sentence embedders. `models/embedder/` is the reward model (the paper
adapts CINO on zh-bo pairs with MultipleNegativesRankingLoss; the tiny profile trains a StaticEmbedding on
the base tokenizer the same way); `models/eval_embedder/` is an independent one (another architecture and
seed) used only by evaluation, so the reward model never grades itself."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from semrl import SemrlError
from semrl.io import atomic_write_text, read_jsonl

KINDS = ("static", "transformer", "pretrained")


def load_embedder(path: str | Path, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    if not (path / "modules.json").is_file():
        raise SemrlError(f"{path}: no sentence-transformers model here (run `dvc repro embedder`)")
    return SentenceTransformer(str(path), device=device, trust_remote_code=False)


def retrieval_top1(model, queries: list[str], targets: list[str], batch_size: int = 128) -> float:
    """Share of queries whose most similar target (cosine) is their own; a duplicate target text counts."""
    import torch

    q = model.encode(queries, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    t = model.encode(targets, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    best = torch.argmax(q @ t.T, dim=1).tolist()
    return sum(targets[j] == targets[i] for i, j in enumerate(best)) / max(1, len(queries))


def _tiny_bert_dir(base_dir: Path, cfg: dict[str, Any], workdir: Path) -> Path:
    """A small BERT initialised from scratch with the base tokenizer, saved where `Transformer` can load it."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    # The base tokenizer pads on the left for generation; an encoder with absolute positions must pad on
    # the right, or a padded text's embedding changes with the batch it is encoded in.
    tokenizer.padding_side = "right"
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=cfg["dim"], num_hidden_layers=cfg["layers"],
                        num_attention_heads=cfg["heads"], intermediate_size=2 * cfg["dim"],
                        max_position_embeddings=cfg["max_seq_length"], pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(workdir, safe_serialization=True)
    tokenizer.save_pretrained(workdir)
    return workdir


def build_model(cfg: dict[str, Any], base_dir: Path, workdir: Path):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, StaticEmbedding, Transformer
    from tokenizers import Tokenizer

    kind = cfg["kind"]
    if kind not in KINDS:
        raise SemrlError(f"embedder kind {kind!r} unknown (known: {', '.join(KINDS)})")
    torch.manual_seed(int(cfg["seed"]))
    if kind == "pretrained":
        if not cfg.get("model"):
            raise SemrlError("embedder kind 'pretrained' needs `model` (a hub id or local path)")
        return SentenceTransformer(cfg["model"], revision=cfg.get("revision"),
                                   trust_remote_code=bool(cfg.get("trust_remote_code")))
    if kind == "static":
        tokenizer = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
        return SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=cfg["dim"])])
    source = cfg.get("model") or _tiny_bert_dir(base_dir, cfg, workdir)  # e.g. hfl/cino-large-v2 at paper scale
    encoder = Transformer(str(source), model_kwargs={"use_safetensors": True},
                          processor_kwargs={"trust_remote_code": bool(cfg.get("trust_remote_code"))})
    encoder.max_seq_length = cfg["max_seq_length"]
    return SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension(), "mean")])


def training_pairs(prepared: Path, use_headlines: bool) -> list[dict[str, str]]:
    pairs = [{"anchor": r["bo"], "positive": r["zh"]} for r in read_jsonl(prepared / "mt" / "train.jsonl")]
    if use_headlines:
        pairs += [{"anchor": r["title"], "positive": r["body"][:500]}
                  for r in read_jsonl(prepared / "headline" / "train.jsonl")]
    return pairs


def train(model, pairs: list[dict[str, str]], cfg: dict[str, Any], workdir: Path) -> float:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    from semrl import tracking

    args = SentenceTransformerTrainingArguments(
        output_dir=str(workdir / "trainer"), num_train_epochs=float(cfg["epochs"]),
        per_device_train_batch_size=int(cfg["batch_size"]), learning_rate=float(cfg["lr"]),
        warmup_steps=int(cfg.get("warmup_steps", 0)), seed=int(cfg["seed"]), report_to=[], save_strategy="no",
        logging_steps=10, bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(),
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # duplicate texts in a batch would be false negatives
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                                         loss=MultipleNegativesRankingLoss(model),
                                         callbacks=[tracking.metrics_callback()])
    return trainer.train().training_loss


def build_one(params: dict[str, Any], role: str) -> dict[str, Any]:
    import mlflow

    from semrl import tracking
    from semrl.base import base_reference

    cfg = params["embedder"][role]
    prepared = Path(params["prepare"]["out_dir"])
    dev = read_jsonl(prepared / "mt" / "dev.jsonl")
    bo_dev, zh_dev = [r["bo"] for r in dev], [r["zh"] for r in dev]
    base_dir = Path(base_reference(params["base"]["out_dir"])["model"])
    out = Path(cfg["out_dir"])
    with tempfile.TemporaryDirectory() as tmp, \
            tracking.run(params, f"embedder-{role}", tags={"semrl.stage": "embedder", "semrl.embedder": role},
                         log_params={"embedder": cfg}):
        model = build_model(cfg, base_dir, Path(tmp))
        metrics = {"kind": cfg["kind"], "dev_pairs": len(dev),
                   "dev_top1_bo2zh_before": round(retrieval_top1(model, bo_dev, zh_dev), 4)}
        if cfg["kind"] != "pretrained" or cfg.get("finetune"):
            pairs = training_pairs(prepared, bool(cfg["use_headlines"]))
            metrics["train_pairs"] = len(pairs)
            metrics["train_loss"] = round(train(model, pairs, cfg, Path(tmp)), 4)
        metrics["dev_top1_bo2zh"] = round(retrieval_top1(model, bo_dev, zh_dev), 4)
        metrics["dim"] = model.get_embedding_dimension()
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        model.save(str(out))
        mlflow.log_artifacts(str(out), artifact_path="embedder")
    return metrics


def run(params: dict[str, Any]) -> dict[str, Any]:
    metrics = {role: build_one(params, role) for role in ("reward", "eval")}
    atomic_write_text(params["embedder"]["metrics_file"], json.dumps(metrics, indent=2) + "\n")
    return metrics
