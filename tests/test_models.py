"""The `base` and `embedder` stages on the smoke configuration: real tokenizer training, real pretraining,
real sentence-transformers training, MLflow runs, and the paper profile's code paths on local models."""
import json
import math
import random

import mlflow
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from semrl import SemrlError
from semrl.core.config import BaseConfig, TrackingConfig, load_config
from semrl.models.base import load_base, resolve_named
from semrl.models.embedder import _UNITS, build_one, load_embedder, view
from semrl.models.tokenizer import tokens_per_syllable, train_tokenizer

from conftest import read_jsonl


def test_tokenizer_keeps_tibetan_syllables_whole(repo_copy):
    lm = repo_copy / "data" / "prepared" / "lm"
    texts = (lm / "zh.txt").read_text(encoding="utf-8").splitlines() + \
        (lm / "bo.txt").read_text(encoding="utf-8").splitlines()
    tok = train_tokenizer(texts[:-20], vocab_size=6000)
    pieces = [tok.decode([i]) for i in tok("བོད་ལྗོངས་ཀྱི་བུ་མོ།", add_special_tokens=False)["input_ids"]]
    assert pieces == ["བོད་", "ལྗོངས་", "ཀྱི་", "བུ་", "མོ", "།"]  # one token per syllable, vowel signs inside
    for text in texts[-20:]:  # and no token ever spans two syllables
        for i in tok(text, add_special_tokens=False)["input_ids"]:
            assert "་" not in tok.decode([i]).rstrip("་")
    assert tokens_per_syllable(tok, texts[-20:]) < 1.3
    zh = "北京是中国的首都。"
    assert tok.decode(tok(zh)["input_ids"]) == zh


def test_base_reloads_offline_and_generates(smoke_repo):
    path = smoke_repo / "models" / "base"
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    assert model.config.model_type == "qwen3" and model.config.tie_word_embeddings
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "把这句话翻译成藏文：你好"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    # ChatML exactly as Qwen3 writes it, ending where the assistant's answer starts
    assert tokenizer.decode(prompt["input_ids"][0]) == \
        "<|im_start|>user\n把这句话翻译成藏文：你好<|im_end|>\n<|im_start|>assistant\n"
    n = prompt["input_ids"].shape[1]
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    again = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert (out[0, :n] == prompt["input_ids"][0]).all() and n < out.shape[1] <= n + 8
    assert (out == again).all()  # greedy decoding is deterministic
    assert tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")  # generation stops at the turn end


def test_base_metrics_and_mlflow_run(smoke_repo):
    metrics = json.loads((smoke_repo / "metrics" / "base.json").read_text())
    assert metrics["n_params"] > 10_000 and math.isfinite(metrics["heldout_ppl_zh"])
    assert metrics["heldout_ppl_zh"] < metrics["vocab_size"] * 2  # learnt something beyond uniform guessing
    params = load_config(smoke_repo / "params.yaml")
    # the repo's own store (not tracking_config: MLFLOW_TRACKING_URI, which other tests' clients export, wins there)
    mlflow.set_tracking_uri(f"sqlite:///{smoke_repo}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["semrl"], output_format="list")
    by_name = {r.info.run_name: r for r in runs}
    assert {"base-tiny", "embedder-reward", "embedder-eval"} <= set(by_name)
    base = by_name["base-tiny"]
    assert base.info.status == "FINISHED"
    assert base.data.tags["semrl.profile"] == params.profile == "tiny"
    assert len(base.data.tags["semrl.data_version"]) == 12 and base.data.tags["semrl.git_commit"]
    history = mlflow.MlflowClient().get_metric_history(base.info.run_id, "loss")
    assert len(history) >= 3 and history[-1].value < history[0].value
    assert base.data.metrics["heldout_ppl_zh"] == metrics["heldout_ppl_zh"]
    # Results only, the same after a fresh and a resumed run: the last logged loss of the whole history
    # (not the invocation's average); how the run went (time, resume step) is in MLflow.
    assert metrics["train_loss"] == pytest.approx(history[-1].value, abs=1e-4)
    assert not {"train_seconds", "resumed_from_step"} & set(metrics)
    assert base.data.metrics["resumed_from_step"] == 0 and base.data.metrics["train_seconds"] > 0


def test_pretraining_text_and_the_taught_skill_on_real_lines(smoke_repo, monkeypatch):
    """The base's Tibetan text takes the headline *train* bodies when asked (never dev/test ones), and the
    general skill it is taught is riddle -> answer in chat format from its own training lines."""
    from semrl.models.base import lm_split, pretraining_texts, skill_documents, skill_pairs

    monkeypatch.chdir(smoke_repo)  # the params' paths are relative to the project root
    cfg = load_config(smoke_repo / "params.yaml")
    prepared = smoke_repo / "data" / "prepared" / "headline"
    bodies = {s: {r["body"] for r in read_jsonl(prepared / f"{s}.jsonl")} for s in ("train", "dev", "test")}
    (_, _), (bo_train, bo_held) = pretraining_texts(cfg)
    assert cfg.base.train.bo_headline_bodies and bodies["train"] <= set(bo_train)
    assert not (bodies["dev"] | bodies["test"]) & set(bo_train)
    off = cfg.model_copy(update={"base": cfg.base.model_copy(update={"train": cfg.base.train.model_copy(
        update={"bo_headline_bodies": False})})})
    assert set(pretraining_texts(off)[1][0]) == set(lm_split(cfg, "bo")[0])
    pairs = skill_pairs(cfg)
    zh_train, zh_held = lm_split(cfg, "zh")
    assert len(pairs) > 10_000 and f"{pairs[0][0]}——{pairs[0][1]}" in zh_train  # real xiehouyu lines
    assert not {f"{r}——{a}" for r, a in pairs} & set(zh_held)
    tok = AutoTokenizer.from_pretrained(smoke_repo / "models" / "base")
    [doc] = skill_documents(tok, pairs[:1], cfg.eval.skill_prompt)
    assert doc.startswith("<|im_start|>user\n歇后语：" + pairs[0][0]) and doc.endswith(pairs[0][1] + "<|im_end|>\n")
    metrics = json.loads((smoke_repo / "metrics" / "base.json").read_text())
    assert metrics["train_blocks_skill"] > 0


def test_embedders_are_trained_and_independent(smoke_repo):
    metrics = json.loads((smoke_repo / "metrics" / "embedder.json").read_text())
    assert metrics["reward"]["dev_top1_bo2zh"] > metrics["reward"]["dev_top1_bo2zh_before"]
    reward = load_embedder(smoke_repo / "models" / "embedder")
    evaluator = load_embedder(smoke_repo / "models" / "eval_embedder")
    assert type(reward[0]).__name__ == "StaticEmbedding" and type(evaluator).__name__ == "CharNgramEmbedder"
    dev = read_jsonl(smoke_repo / "data" / "prepared" / "mt" / "dev.jsonl")[:8]
    a = reward.encode([r["bo"] for r in dev], normalize_embeddings=True)
    b = reward.encode([r["zh"] for r in dev], normalize_embeddings=True)
    assert (a * b).sum(1).mean() > 0.05  # translations lie closer than chance after training
    # The monolingual view pairs teach same-language similarity: a dev line (never trained on) lies closer
    # to a random view of itself than to the other dev lines.
    assert metrics["reward"]["train_pairs_views"] == metrics["reward"]["train_pairs_translation"]  # views: 1, [bo]
    rng = random.Random(0)
    v = reward.encode([view(r["bo"], 0.5, rng) for r in dev], normalize_embeddings=True)
    cos = a @ v.T
    assert (cos.diagonal() > (cos.sum(1) - cos.diagonal()) / (len(dev) - 1)).mean() >= 0.75
    # The evaluator shares nothing with the reward model: its own vocabulary (character n-grams, none of
    # them a base-tokenizer token id), fitted on the LM text only, no training pairs, no loss.
    assert metrics["eval"]["kind"] == "char_ngram" and metrics["eval"]["fit_texts"] > 0
    assert "train_pairs" not in metrics["eval"] and "dev_top1_bo2zh" not in metrics["eval"]
    assert max(map(len, evaluator.vectorizer.vocabulary)) == 3
    bo = [r["bo"] for r in dev]
    e = evaluator.encode(bo + [dev[0]["zh"]])
    assert (e[:-1] * e[:-1]).sum(1) == pytest.approx([1.0] * len(bo), abs=1e-5)
    assert float(e[0] @ e[-1]) < 0.1  # a Tibetan line and a Chinese one share (almost) no n-gram


def test_paper_code_paths_on_local_models(smoke_repo, tmp_path):
    # A named base model (here a local path in place of Qwen/Qwen3-4B) is resolved, not trained ...
    b = BaseConfig(pretrained=str(smoke_repo / "models" / "base"))
    info = resolve_named(b, tmp_path / "base")
    assert info["model_type"] == "qwen3" and (tmp_path / "base" / "source.json").is_file()
    model, tokenizer = load_base(tmp_path / "base")
    assert model.generate(**tokenizer("你好", return_tensors="pt"), max_new_tokens=2).shape[1] >= 2
    # ... and a model that is not a causal LM is refused with a clear error.
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(tmp_path / "bert")
    with pytest.raises(SemrlError, match="not a causal LM"):
        resolve_named(b.model_copy(update={"pretrained": str(tmp_path / "bert")}), tmp_path / "x")
    # A named embedder (here the smoke reward embedder in place of KEVVVV/bo2zh-embedding) loads as is.
    params = load_config(smoke_repo / "params.yaml")
    params.prepare.out_dir = smoke_repo / "data" / "prepared"
    params.base.out_dir = smoke_repo / "models" / "base"
    params.tracking = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=tmp_path / "art")
    params.embedder.reward = params.embedder.reward.model_copy(update=dict(
        kind="pretrained", model=str(smoke_repo / "models" / "embedder"), out_dir=tmp_path / "emb"))
    m = build_one(params, "reward")
    original = json.loads((smoke_repo / "metrics" / "embedder.json").read_text())["reward"]
    assert "train_loss" not in m and m["dev_top1_bo2zh"] == original["dev_top1_bo2zh"]
    assert torch.allclose(torch.tensor(load_embedder(tmp_path / "emb").encode(["བོད"])),
                          torch.tensor(load_embedder(smoke_repo / "models" / "embedder").encode(["བོད"])))


def test_embeddings_do_not_depend_on_the_batch(smoke_repo):
    """Padding must not leak into an embedding (it did when the encoder inherited left padding)."""
    import numpy as np

    texts = ["བོད་ལྗོངས་ཀྱི་", "གདོད་ནས་ལྷུན་གྲུབ་འོད་གསལ་རིག་པའི་གཤིས། །ཡ་མཚན་མཆོག་གི་དངོས་གྲུབ་བརྙེས། །"]
    for name in ("embedder", "eval_embedder"):
        model = load_embedder(smoke_repo / "models" / name)
        together = model.encode(texts, normalize_embeddings=True)
        alone = np.stack([model.encode([t], normalize_embeddings=True)[0] for t in texts])
        assert np.abs(together - alone).max() < 1e-4, name


def test_views_drop_whole_units_of_real_lines(repo_copy):
    """The reward embedder's monolingual pairs: views of real MT lines keep whole Tibetan syllables and
    Han characters, are reproducible from the seed, and drop about the configured share."""
    rows = read_jsonl(repo_copy / "data" / "prepared" / "mt" / "train.jsonl")[:200]
    for r in rows:
        for text in (r["bo"], r["zh"]):
            assert "".join(_UNITS.findall(text)) == text  # the units tile the text
    for u in (u.strip() for r in rows for u in _UNITS.findall(r["bo"])):
        assert "\u0f0b" not in u[:-1]  # a unit ends at a tsheg: never a syllable cut in two
    a = [view(r["bo"], 0.5, random.Random(1)) for r in rows]
    assert a == [view(r["bo"], 0.5, random.Random(1)) for r in rows]
    kept = sum(len(_UNITS.findall(x)) for x in a) / sum(len(_UNITS.findall(r["bo"])) for r in rows)
    assert 0.4 < kept < 0.65
    for x, r in zip(a, rows):  # a view is the line with units left out: its characters, in order
        rest = iter(r["bo"])
        assert x and all(c in rest for c in x)
    assert view("藏文", 0.0, random.Random(0)) == "藏文" and view("ཀ་", 0.99, random.Random(0)) == "ཀ་"


def test_a_named_base_pins_its_revision_for_the_tokenizer_as_for_the_weights(tmp_path):
    """The cold start loads a named base's tokenizer and weights at the revision `base` resolved (paper
    profile: base.revision); a branch loads its cold start's folder, no revision."""
    import json

    from semrl.core.config import Config
    from semrl.core.methods import get_method
    from semrl.models.base import SOURCE_FILE
    from semrl.training.trainers import model_init_kwargs, source_kwargs

    (tmp_path / SOURCE_FILE).write_text(json.dumps({"model": "Qwen/Qwen3-4B", "revision": "1cfa9a7",
                                                    "trust_remote_code": False}))
    cfg = Config.model_validate({"base": {"out_dir": str(tmp_path)}})
    pinned = {"revision": "1cfa9a7", "trust_remote_code": False}
    assert source_kwargs(cfg, get_method(cfg, "coldstart")) == pinned
    assert model_init_kwargs(cfg, get_method(cfg, "coldstart")) == {"dtype": "float32", **pinned}
    assert source_kwargs(cfg, get_method(cfg, "sft")) == {}
