"""Batched chat generation with fixed decoding settings (cold-start calibration, evaluation)."""
from __future__ import annotations

from typing import Any

from tqdm import tqdm

from semrl.models.chat import render_prompts, strip_thinking


def accelerator() -> str:
    """Where evaluation and calibration run: the first CUDA device when torch sees one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             desc: str = "generate") -> list[str]:
    """Completions for user prompts, through the tokenizer's chat template (thinking off), left-padded in
    batches; a leading thinking block is stripped from each."""
    import torch

    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    model.eval()
    sampling: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        sampling.update(temperature=temperature, top_p=top_p)
    outputs = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        texts = render_prompts(tokenizer, prompts[i:i + batch_size])
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **sampling)
        outputs += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [strip_thinking(o).strip() for o in outputs]
