"""DVC stage `embedder`: the frozen sentence embedders. `models/embedder/` is the reward model (the paper
adapts CINO on zh-bo pairs with MultipleNegativesRankingLoss; the tiny profile trains a StaticEmbedding on
the base tokenizer the same way); `models/eval_embedder/` is an independent one used only by evaluation, so the reward
model never grades itself (tiny: character n-gram TF-IDF fitted on other text; paper: LaBSE)."""
from __future__ import annotations

import json
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from semrl import SemrlError
from semrl.core.config import Config, EmbedderRole
from semrl.core.io import atomic_write_text, read_jsonl
from semrl.core.text import TSHEG

class CharNgramEmbedder:
    """A sentence "embedder" with its own vocabulary and no learnt weights: l2-normalised TF-IDF over the
    character n-grams of a text (sublinear term frequency), the IDF fitted on a reference corpus. Cosine
    of two texts is their weighted character n-gram overlap. Used as the tiny profile's evaluation
    embedder because it shares nothing with the reward model: not its tokenizer, not its training pairs."""

    FILE = "char_ngram.json"

    def __init__(self, vocabulary: dict[str, int], idf: list[float], ngram_max: int):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.ngram_max = ngram_max
        self.vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, ngram_max), vocabulary=vocabulary,
                                          sublinear_tf=True, lowercase=False, dtype=np.float32)
        self.vectorizer.idf_ = np.asarray(idf, dtype=np.float32)

    @classmethod
    def fit(cls, texts: list[str], max_features: int, ngram_max: int) -> "CharNgramEmbedder":
        from sklearn.feature_extraction.text import TfidfVectorizer

        fitted = TfidfVectorizer(analyzer="char", ngram_range=(1, ngram_max), max_features=max_features,
                                 sublinear_tf=True, lowercase=False, dtype=np.float32).fit(texts)
        vocabulary = {k: int(v) for k, v in fitted.vocabulary_.items()}
        return cls(vocabulary, fitted.idf_.tolist(), ngram_max)

    def encode(self, texts: list[str], batch_size: int = 64, normalize_embeddings: bool = True,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, show_progress_bar: bool = False):
        """The sentence-transformers call signature, as Similarity and retrieval_top1 use it."""
        dense = self.vectorizer.transform(texts).toarray()  # rows are l2-normalised already
        if convert_to_tensor:
            import torch

            return torch.from_numpy(dense)
        return dense

    def get_embedding_dimension(self) -> int:
        return len(self.vectorizer.vocabulary)

    def save(self, path: str, create_model_card: bool = False) -> None:
        """As SentenceTransformer.save (which the caller treats it as); it never writes a model card."""
        Path(path).mkdir(parents=True, exist_ok=True)
        data = {"kind": "char_ngram", "ngram_max": self.ngram_max, "vocabulary": self.vectorizer.vocabulary,
                "idf": [float(x) for x in self.vectorizer.idf_]}
        atomic_write_text(Path(path) / self.FILE, json.dumps(data, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: Path) -> "CharNgramEmbedder":
        data = json.loads((path / cls.FILE).read_text(encoding="utf-8"))
        return cls(data["vocabulary"], data["idf"], data["ngram_max"])


def load_embedder(path: str | Path, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    from semrl.core.checkpoints import require_whole_model

    path = Path(path)
    if path.is_dir():
        require_whole_model(path, "embedder")
    if (path / CharNgramEmbedder.FILE).is_file():
        return CharNgramEmbedder.load(path)
    if not (path / "modules.json").is_file():
        raise SemrlError(f"{path}: no sentence-transformers model here (run `dvc repro embedder`)")
    return SentenceTransformer(str(path), device=device, trust_remote_code=False)


class Similarity:
    """Cosine similarity of texts to references under a frozen sentence embedder. Reference embeddings are
    cached (a GRPO batch holds each reference G times, and epochs repeat them); an empty text scores 0
    (it has no meaningful embedding)."""

    def __init__(self, embedder: Any, cache: bool = True, batch_size: int = 64, device: str | None = None):
        self.model = load_embedder(embedder, device) if isinstance(embedder, (str, Path)) else embedder
        self.cache: dict[str, np.ndarray] | None = {} if cache else None
        self.batch_size = batch_size

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)

    def _references(self, references: list[str]) -> np.ndarray:
        if self.cache is None:
            return self._encode(references)
        missing = list(dict.fromkeys(r for r in references if r not in self.cache))
        if missing:
            self.cache.update(zip(missing, self._encode(missing)))
        return np.stack([self.cache[r] for r in references])

    def similarity(self, texts: list[str], references: list[str]) -> list[float]:
        if len(texts) != len(references):
            raise SemrlError(f"similarity: {len(texts)} texts but {len(references)} references")
        filled = [i for i, t in enumerate(texts) if t.strip()]
        s = np.zeros(len(texts))
        if filled:
            comp = self._encode([texts[i] for i in filled])
            refs = self._references([references[i] for i in filled])
            s[filled] = np.einsum("ij,ij->i", comp, refs)
        return [float(x) for x in np.nan_to_num(s)]


def retrieval_top1(model, queries: list[str], targets: list[str], batch_size: int = 128) -> float:
    """Share of queries whose most similar target (cosine) is their own; a duplicate target text counts."""
    import torch

    q = model.encode(queries, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    t = model.encode(targets, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    best = torch.argmax(q @ t.T, dim=1).tolist()
    return sum(targets[j] == targets[i] for i, j in enumerate(best)) / max(1, len(queries))


def _tiny_bert_dir(base_dir: Path, cfg: EmbedderRole, workdir: Path) -> Path:
    """A small BERT initialised from scratch with the base tokenizer, saved where `Transformer` can load it."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    # The base tokenizer pads on the left for generation; an encoder with absolute positions must pad on
    # the right, or a padded text's embedding changes with the batch it is encoded in.
    tokenizer.padding_side = "right"
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=cfg.dim, num_hidden_layers=cfg.layers,
                        num_attention_heads=cfg.heads, intermediate_size=2 * cfg.dim,
                        max_position_embeddings=cfg.max_seq_length, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(workdir, safe_serialization=True)
    tokenizer.save_pretrained(workdir)
    return workdir


def build_model(cfg: EmbedderRole, base_dir: Path, workdir: Path):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, StaticEmbedding, Transformer
    from tokenizers import Tokenizer

    torch.manual_seed(cfg.seed)
    if cfg.kind == "char_ngram":
        raise SemrlError("embedder kind 'char_ngram' is fitted, not built (semrl.models.embedder.build_one)")
    if cfg.kind == "pretrained":
        if not cfg.model:
            raise SemrlError("embedder kind 'pretrained' needs `model` (a hub id or local path)")
        return SentenceTransformer(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if cfg.kind == "static":
        tokenizer = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
        return SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=cfg.dim)])
    source = cfg.model or _tiny_bert_dir(base_dir, cfg, workdir)  # e.g. hfl/cino-large-v2 at paper scale
    encoder = Transformer(str(source), model_kwargs={"use_safetensors": True},
                          processor_kwargs={"trust_remote_code": cfg.trust_remote_code})
    encoder.max_seq_length = cfg.max_seq_length
    return SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension(), "mean")])


# A view's units: a Tibetan syllable with its tsheg/space, a Han character, or any other run (digits, Latin).
_UNITS = re.compile(rf"[\u0f00-\u0fff]+?(?:{TSHEG}|\s+|$)|[^\u0f00-\u0fff\u3400-\u9fff\s]+\s*|\S\s*|\s+")


def view(text: str, drop: float, rng: random.Random) -> str:
    """A random view of a text: each unit (syllable, character) dropped with probability `drop`, at least
    one kept. Two views of one text are a positive pair: the embedder learns that texts sharing most of
    their units are close, which is what lets it rank a model's output against a same-language reference."""
    units = _UNITS.findall(text)
    kept = [u for u in units if rng.random() >= drop] or [rng.choice(units or [text])]
    return "".join(kept).strip()


def view_pairs(texts: list[str], cfg: EmbedderRole) -> list[dict[str, str]]:
    rng = random.Random(cfg.seed)
    return [{"anchor": view(t, cfg.view_drop, rng), "positive": view(t, cfg.view_drop, rng)}
            for _ in range(cfg.views) for t in texts]


def training_pairs(prepared: Path, cfg: EmbedderRole) -> dict[str, list[dict[str, str]]]:
    """The pairs by kind: bo-zh translations of the MT train split (the paper's adaptation data), headline
    title-body pairs (use_headlines), and `views` monolingual view pairs per MT training text in each of
    view_scripts (derived; never dev or test text)."""
    mt = read_jsonl(prepared / "mt" / "train.jsonl")
    groups = {"translation": [{"anchor": r["bo"], "positive": r["zh"]} for r in mt]}
    if cfg.use_headlines:
        groups["headline"] = [{"anchor": r["title"], "positive": r["body"][:cfg.headline_body_chars]}
                              for r in read_jsonl(prepared / "headline" / "train.jsonl")]
    if cfg.views:
        groups["views"] = view_pairs([r[script] for script in cfg.view_scripts for r in mt], cfg)
    return groups


def train(model, pairs: list[dict[str, str]], cfg: EmbedderRole, workdir: Path) -> float:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    from semrl.core import tracking

    args = SentenceTransformerTrainingArguments(
        output_dir=str(workdir / "trainer"), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps, seed=cfg.seed, report_to=[], save_strategy="no",
        logging_steps=cfg.logging_steps, bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(),
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # duplicate texts in a batch would be false negatives
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                                         loss=MultipleNegativesRankingLoss(model),
                                         callbacks=[tracking.metrics_callback()])
    return trainer.train().training_loss


def build_one(config: Config, role: str) -> dict[str, Any]:
    import mlflow

    from semrl.core import tracking
    from semrl.models.base import base_reference

    cfg: EmbedderRole = getattr(config.embedder, role)
    prepared = config.prepare.out_dir
    dev = read_jsonl(prepared / "mt" / "dev.jsonl")
    bo_dev, zh_dev = [r["bo"] for r in dev], [r["zh"] for r in dev]
    base_dir = Path(base_reference(config.base.out_dir)["model"])
    out = cfg.out_dir
    with tempfile.TemporaryDirectory() as tmp, \
            tracking.run(config, f"embedder-{role}", tags={"semrl.stage": "embedder", "semrl.embedder": role},
                         log_params={"embedder": cfg.model_dump(mode="json")}):
        if cfg.kind == "char_ngram":  # fitted on the base's LM training text: no MT or headline pair
            from semrl.models.base import lm_split

            texts = lm_split(config, "bo")[0] + lm_split(config, "zh")[0]
            model = CharNgramEmbedder.fit(texts, cfg.dim, cfg.ngram_max)
            metrics = {"kind": cfg.kind, "dev_pairs": len(dev), "fit_texts": len(texts)}
        else:
            model = build_model(cfg, base_dir, Path(tmp))
            metrics = {"kind": cfg.kind, "dev_pairs": len(dev),
                       "dev_top1_bo2zh_before": round(retrieval_top1(model, bo_dev, zh_dev), 4)}
        if cfg.kind not in ("pretrained", "char_ngram") or cfg.finetune:
            groups = training_pairs(prepared, cfg)
            pairs = [p for group in groups.values() for p in group]
            metrics["train_pairs"] = len(pairs)
            metrics.update({f"train_pairs_{name}": len(group) for name, group in groups.items()})
            metrics["train_loss"] = round(train(model, pairs, cfg, Path(tmp)), 4)
        if cfg.kind != "char_ngram":  # cross-lingual retrieval: not what a monolingual n-gram model does
            metrics["dev_top1_bo2zh"] = round(retrieval_top1(model, bo_dev, zh_dev), 4)
        metrics["dim"] = model.get_embedding_dimension()
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        # No model card: sentence-transformers writes the training time into it, so every rerun changed the
        # output's hash (the weights are bit-identical) and DVC reran everything downstream of the embedder.
        model.save(str(out), create_model_card=False)
        mlflow.log_artifacts(str(out), artifact_path="embedder")
    return metrics


def run(config: Config) -> dict[str, Any]:
    metrics = {role: build_one(config, role) for role in ("reward", "eval")}
    atomic_write_text(config.embedder.metrics_file, json.dumps(metrics, indent=2) + "\n")
    return metrics
