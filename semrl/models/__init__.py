"""Stages `base` and `embedder`: the base causal LM, its tokenizer, the sentence embedders, and generation."""
