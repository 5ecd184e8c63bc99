"""The fast GRPO step computes what TRL computes: the sampler's distribution against HF's warpers, greedy
decoding against `generate`, and the shared-prefix log-probs, entropies and gradients against TRL's own
pass on the smoke model (full fine-tuning and LoRA, policy and reference), with TRL's path kept wherever
the shortcut would differ (gradient checkpointing)."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)
from trl import GRPOTrainer

from semrl.core.methods import get_method
from semrl.models.chat import render_prompts
from semrl.models.generation import Sampler, sample_completions, shared_rows
from semrl.training.shared_prefix import SharedPrefixGRPOTrainer
from semrl.training.trainers import make_trainer, method_items

SETTINGS = [(0.8, 0, 0.9, None), (1.0, 20, 0.9, None), (0.7, 0, 1.0, 0.05), (0.8, 50, 0.95, 0.1), (0.6, 0, 0.3, None),
            (1.0, 0, 1.0, None)]


def hf_distribution(logits, temperature, top_k, top_p, min_p):
    warp = LogitsProcessorList()
    if temperature != 1.0:
        warp.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warp.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warp.append(TopPLogitsWarper(top_p))
    if min_p:
        warp.append(MinPLogitsWarper(min_p))
    return torch.softmax(warp(None, logits.clone()), dim=-1)


@pytest.mark.parametrize("scale", [0.3, 3.0, 10.0])  # flat (nucleus wider than the candidates) to peaked
@pytest.mark.parametrize("setting", SETTINGS)
def test_sampler_keeps_exactly_the_tokens_and_weights_hf_keeps(scale, setting):
    torch.manual_seed(0)
    logits = torch.randn(16, 3000) * scale
    weights, ids = Sampler(*setting).filtered(logits)
    ours = torch.zeros_like(logits).scatter_add_(1, ids, weights)
    ours = ours / ours.sum(-1, keepdim=True)
    assert torch.allclose(ours, hf_distribution(logits, *setting), atol=1e-6)


@pytest.mark.parametrize("setting", SETTINGS)
def test_sampler_draws_follow_the_hf_distribution(setting):
    torch.manual_seed(1)
    logits = torch.randn(1, 200) * 0.7  # flat: the nucleus rejection loop runs several rounds
    expected = hf_distribution(logits, *setting)[0]
    n = 100_000
    tokens = Sampler(*setting)(logits.expand(n, -1))
    freq = torch.bincount(tokens, minlength=200).float() / n
    assert float(freq[expected == 0].sum()) == 0.0  # never a token HF would have dropped
    # Total variation within sampling noise (its expectation here is < 0.02 for every setting).
    assert float((freq - expected).abs().sum() / 2) < 0.03


def test_shared_rows_groups_identical_rows():
    ids = torch.tensor([[0, 5, 6], [1, 2, 3], [0, 5, 6], [1, 2, 3], [0, 5, 7]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1]])
    first, inverse = shared_rows(ids, mask)
    assert len(first) == 3
    assert torch.equal(ids[first][inverse], ids) and torch.equal(mask[first][inverse], mask)


def test_greedy_decoding_matches_generate(smoke_mt):
    cfg, task, init, tokenizer = smoke_mt
    model = AutoModelForCausalLM.from_pretrained(init).eval()
    prompts = [x["prompt"] for x in task.examples("dev", tokenizer, cfg.train.max_input_tokens)[:6]]
    ids = tokenizer(render_prompts(tokenizer, prompts), add_special_tokens=False)["input_ids"]
    ours = sample_completions(model, ids, max_new_tokens=10, eos_ids=[tokenizer.eos_token_id],
                              pad_id=tokenizer.pad_token_id, sampler=None)
    for row, mine in zip(ids, ours):  # one at a time: no padding in HF's run
        out = model.generate(torch.tensor([row]), max_new_tokens=10, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        assert mine == out[0, len(row):].tolist()[:len(mine)] and len(mine) >= 1
        assert tokenizer.eos_token_id not in mine[:-1]  # cut after the first EOS


def grpo_batch(cfg, task, init, tokenizer, tmp_path, lora: bool):
    cfg = cfg.model_copy(deep=True)
    cfg.train.lora.enabled = lora
    cfg.train.lora.dropout = 0.0  # dropout draws differ between any two passes; compare the arithmetic
    cfg.train.grpo.beta = 0.04  # a reference pass to compare too
    method = get_method(cfg, "grpo")
    items = method_items(cfg, method, task.examples("train", tokenizer, cfg.train.max_input_tokens), 0)[:8]
    trainer = make_trainer(cfg, task, method, 0, items, init, tmp_path / "ckpt", tokenizer, 0.1)
    assert isinstance(trainer, SharedPrefixGRPOTrainer)
    g = trainer.num_generations
    rows = [trainer.train_dataset[i] for i in range(4) for _ in range(g)]  # as TRL's sampler groups them
    trainer.model.train()  # as in training: the trainer logs under "train"
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions(rows)
    metrics = trainer._metrics["train"]
    assert metrics["shared_prefix/generation"][-1] == metrics["shared_prefix/reference"][-1] == 1.0  # both shared
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    return trainer, batch, ids, mask


def logps_and_grads(cls, trainer, ids, mask, n_completion, completion_mask):
    model = trainer.model
    model.zero_grad()
    logps, entropy, _ = cls._get_per_token_logps_and_entropies(trainer, model, ids, mask, n_completion,
                                                               compute_entropy=True)
    (logps * completion_mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), entropy.detach(), grads


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prefix_logps_and_gradients_equal_trl(smoke_mt, tmp_path, lora):
    trainer, batch, ids, mask = grpo_batch(*smoke_mt, tmp_path, lora)
    n, cmask = batch["completion_ids"].size(1), batch["completion_mask"]
    assert all(len(set(map(tuple, batch["prompt_ids"][i:i + 2].tolist()))) == 1 for i in range(0, 8, 2))
    ours = logps_and_grads(SharedPrefixGRPOTrainer, trainer, ids, mask, n, cmask)
    trl = logps_and_grads(GRPOTrainer, trainer, ids, mask, n, cmask)
    keep = cmask.bool()
    assert torch.allclose(ours[0][keep], trl[0][keep], atol=1e-4)  # log-probs of the completion tokens
    assert torch.allclose(ours[1][keep], trl[1][keep], atol=1e-4)  # entropies
    assert ours[2].keys() == trl[2].keys() and len(trl[2]) > 0
    if lora:
        assert all("lora" in name for name in trl[2])
    for name, g in trl[2].items():
        assert torch.allclose(ours[2][name], g, atol=1e-5, rtol=1e-3), name
    # The reference pass (LoRA: the adapter disabled; full: TRL's frozen copy of the start) matches TRL's too.
    with torch.no_grad():
        if lora:
            with trainer.accelerator.unwrap_model(trainer.model).disable_adapter():
                ref = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, mask, n)[0]
        else:
            ref = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.ref_model, ids, mask, n)[0]
    assert torch.allclose(batch["ref_per_token_logps"][keep], ref[keep], atol=1e-4)


def test_gradient_checkpointing_falls_back_to_trl(smoke_mt, tmp_path):
    trainer, batch, ids, mask = grpo_batch(*smoke_mt, tmp_path, lora=False)
    trainer.model.gradient_checkpointing_enable()
    trainer.model.train()
    n = batch["completion_ids"].size(1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, n, compute_entropy=True)
    assert trainer._metrics["train"]["shared_prefix/policy"][-1] == 0.0  # HF drops the cache in checkpointed layers
    with torch.no_grad():
        shared, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, n)  # no grad: allowed
    assert trainer._metrics["train"]["shared_prefix/reference"][-1] == 1.0
    keep = batch["completion_mask"].bool()
    assert torch.allclose(logps.detach()[keep], shared[keep], atol=1e-4)
    # The rollouts keep the shared-prefix sampler: they run without gradients and TRL turns checkpointing off
    prompts = [row[m.bool()].tolist() for row, m in zip(batch["prompt_ids"], batch["prompt_mask"])]
    completions, _ = trainer._generate_single_turn(prompts, None, None, trainer.num_generations)
    assert len(completions) == len(prompts) and trainer._metrics["train"]["shared_prefix/generation"][-1] == 1.0
    assert trainer.accelerator.unwrap_model(trainer.model).is_gradient_checkpointing  # and back on after


def test_grpo_completions_end_at_eos_and_fit_the_budget(smoke_mt, tmp_path):
    trainer, batch, _, _ = grpo_batch(*smoke_mt, tmp_path, lora=False)
    eos = set(trainer.eos_token_ids)
    for row, m in zip(batch["completion_ids"].tolist(), batch["completion_mask"].tolist()):
        tokens = row[:sum(m)]
        assert 1 <= len(tokens) <= trainer.max_completion_length
        assert not eos & set(tokens[:-1])
