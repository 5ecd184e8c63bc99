"""Byte-level BPE tokenizer for Chinese + Tibetan, with Tibetan-aware pre-tokenisation and a chat template."""
from __future__ import annotations

from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from semrl.core.text import bo_syllables

# The GPT-2/Qwen byte-level regex splits Tibetan at every vowel sign and subjoined letter (they are \p{M}).
# Split instead on: one Han character; a run of letters+marks with its trailing tsheg (a Tibetan syllable,
# a Latin word); a digit; a run of other symbols; whitespace. ByteLevel then maps bytes without its regex.
PRETOKENIZE = Regex(r"\p{Han}|[\p{L}\p{M}]+\u0F0B?|\p{N}|[^\s\p{L}\p{M}\p{N}]+|\s+")
PAD, EOS, IM_START = "<|endoftext|>", "<|im_end|>", "<|im_start|>"
SPECIAL_TOKENS = [PAD, IM_START, EOS]
# ChatML as Qwen3 uses it; {% generation %} marks the assistant's tokens for assistant-only loss.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(PRETOKENIZE, behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20, padding_side="left",  # left padding: batched generation
    )


def tokens_per_syllable(tokenizer, texts: Iterable[str]) -> float:
    """Tokens per Tibetan syllable: 1.0 means one token per syllable (the tsheg rides along)."""
    n_tokens = n_syllables = 0
    for text in texts:
        n_tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        n_syllables += len(bo_syllables(text))
    return n_tokens / max(1, n_syllables)
