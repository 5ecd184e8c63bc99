"""GRPO with shared prompt prefixes: TRL's GRPOTrainer, the same loss and sampling, without the repeated work.

A GRPO batch holds each prompt `num_generations` times. TRL runs every copy through the model: in generation
(prefill), in the reference pass and in the policy pass, and on CPU its fused LM head also scores every prompt
position (it scores only the completion positions on Triton devices). Here each distinct prompt goes through
the model once; its key/value cache is indexed out to its copies (an index, so gradients flow back into the
shared prompt positions), and only the completion tokens reach the LM head. Positions, masks and the tokens
scored are those of TRL's full forward, so the log-probs are the same numbers up to float summation order
(tests/test_shared_prefix.py checks values and gradients against TRL's own path).

Generation is a plain sampling loop over that cache (HF's temperature, top-k, top-p and min-p warpers, in
HF's order), not `generate`, whose per-token bookkeeping costs more than a small model's forward.

Falls back to TRL's code wherever the shortcut would not be the same computation: vLLM or continuous
batching, images, MoE aux losses, distributed data parallel (DDP's reducer expects one forward per
backward), the policy pass under gradient checkpointing (HF drops the cache inside checkpointed layers; the
rollouts and the no-gradient passes keep the shortcut), a repetition penalty or extra generation kwargs, or
a batch without repeated prompts. Which passes took it is logged per step (shared_prefix/<pass>).
"""
from __future__ import annotations

import torch
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation

from semrl.models.generation import Sampler, kv_cache, sample_completions, shared_rows


def shared_prefix_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                        compute_entropy: bool):
    """Per-token log-probs (and entropies) of the last `logits_to_keep` tokens under a model patched with TRL's
    fused LM head, the prompt prefix computed once per distinct prompt. None when no prompt repeats."""
    cut = input_ids.size(1) - logits_to_keep - 1  # the prefix: the prompt but its last token
    if cut < 1:
        return None
    first, inverse = shared_rows(input_ids[:, :cut], attention_mask[:, :cut])
    if len(first) == len(input_ids):
        return None
    prefix = model(input_ids=input_ids[first, :cut], attention_mask=attention_mask[first, :cut], use_cache=True,
                   logits_to_keep=1)
    cache = kv_cache(prefix)
    cache.batch_select_indices(inverse)  # an index: the copies' gradients add up in the shared prefix
    # The suffix starts at the prompt's last token, whose hidden state predicts the first completion token.
    suffix_ids = input_ids[:, cut:]
    labels = suffix_ids.masked_fill(attention_mask[:, cut:] == 0, -100)
    labels[:, 0] = -100
    out = model(input_ids=suffix_ids, attention_mask=attention_mask, cache=cache, labels=labels, fused_lm_head=True)
    logps = out.log_probs[:, -logits_to_keep:]
    entropy = out.entropy[:, -logits_to_keep:] if compute_entropy else None
    return logps, entropy


class SharedPrefixGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose generation and log-prob passes compute each distinct prompt once (module docstring)."""

    def _shortcut_ok(self, model, generating: bool = False) -> bool:
        if self.use_vllm or getattr(self, "use_transformers_continuous_batching", False):
            return False
        if self.accelerator.num_processes > 1 or getattr(self, "_is_vlm", False):
            return False
        if generating:  # rollouts run under no_grad with checkpointing off (TRL's unwrap_model_for_generation)
            return True
        unwrapped = self.accelerator.unwrap_model(model)
        checkpointing = getattr(unwrapped, "is_gradient_checkpointing", False)
        return not (checkpointing and unwrapped.training and torch.is_grad_enabled())

    def _record(self, pass_name: str, shared: bool) -> None:
        """Which passes took the shared prefix, as training metrics (MLflow): shared_prefix/generation, /policy
        (the pass with gradients) and /reference (the no-gradient passes: reference model, old policy)."""
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][f"shared_prefix/{pass_name}"].append(float(shared))

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        plain = not compute_aux_loss and all(v is None for v in multimodal.values())
        pass_name = "policy" if torch.is_grad_enabled() else "reference"
        if plain and self._shortcut_ok(model):
            step = batch_size or len(input_ids)  # TRL's chunks (a memory bound), each with its shared prompts
            chunks = []
            with self.accelerator.autocast():
                for start in range(0, len(input_ids), step):
                    rows = slice(start, start + step)
                    chunks.append(shared_prefix_logps(model, input_ids[rows], attention_mask[rows], logits_to_keep,
                                                      compute_entropy))
            if all(c is not None for c in chunks):
                self._record(pass_name, True)
                logps = torch.cat([c[0] for c in chunks])
                return logps, torch.cat([c[1] for c in chunks]) if compute_entropy else None, None
        self._record(pass_name, False)  # TRL's pass
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, compute_entropy=compute_entropy,
            compute_aux_loss=compute_aux_loss, **multimodal)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        plain = (images is None and not multimodal_fields and not has_tool_images
                 and (self.repetition_penalty in (None, 1.0)) and not self.args.generation_kwargs)
        if not (plain and self._shortcut_ok(self.model_wrapped, generating=True)):
            self._record("generation", False)
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        with (unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                          gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                          gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs)
              as unwrapped, torch.no_grad()):
            completions = sample_completions(
                unwrapped, prompt_ids, max_new_tokens=self.max_completion_length, eos_ids=list(self.eos_token_ids),
                pad_id=self._tokenizer.pad_token_id,
                sampler=Sampler(self.temperature, self.top_k, self.top_p, self.min_p))
        self._record("generation", True)
        return completions, None
