"""Chat rendering in one place: every prompt goes through the tokenizer's chat template with thinking off
where the template has the switch (Qwen3), and every decoded completion loses a leading <think> block
before rewards and metrics see it."""
from __future__ import annotations

from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def template_kwargs(tokenizer) -> dict[str, Any]:
    """Extra chat-template arguments: `enable_thinking=False` when the template reads that switch. Qwen3's
    template otherwise leaves the generation prompt open for a thinking block, which the model then fills
    (the answer budget goes to thinking, and the tags — plain text, not special tokens — reach the
    rewards); with the switch off it writes the empty block `<think>\\n\\n</think>\\n\\n` into the prompt."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates
        template = " ".join(map(str, template.values()))
    return {"enable_thinking": False} if "enable_thinking" in str(template) else {}


def user_turn(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def render(tokenizer, chats: list[list[dict[str, str]]], add_generation_prompt: bool = True) -> list[str]:
    """The chats as text through the tokenizer's template, thinking off (template_kwargs)."""
    return tokenizer.apply_chat_template(chats, add_generation_prompt=add_generation_prompt, tokenize=False,
                                         **template_kwargs(tokenizer))


def render_prompts(tokenizer, prompts: list[str]) -> list[str]:
    """User prompts as generation prompts (the assistant's turn opened)."""
    return render(tokenizer, [user_turn(p) for p in prompts])


def strip_thinking(text: str) -> str:
    """The completion without a leading <think>…</think> block (an unclosed one is all thinking: nothing
    left). Other text is returned unchanged."""
    head = text.lstrip()
    if not head.startswith(THINK_OPEN):
        return text
    end = head.find(THINK_CLOSE)
    return "" if end < 0 else head[end + len(THINK_CLOSE):].lstrip()
