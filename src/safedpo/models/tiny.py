"""Tiny real models for tests, the demo and benchmarks: a word-level ``tokenizers`` tokenizer
wrapped as ``PreTrainedTokenizerFast`` and a small ``LlamaForCausalLM``, both saved with
``save_pretrained`` so they load through exactly the path users take with real models.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from safedpo.models.prompts import SAFE_RLHF_TEMPLATE

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>",
                  "unk_token": "<unk>"}


def make_word_tokenizer(texts: Iterable[str], extra_words: Iterable[str] = ()):
    """Word-level tokenizer over every whitespace/punctuation-split word of ``texts``.

    The safe-rlhf prompt template's words are always in the vocabulary. Decoding joins
    words with single spaces.
    """
    # tokenizers/transformers/torch: slow to import; only building the tiny model needs them
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.WhitespaceSplit()
    words: dict[str, None] = {}
    for text in [SAFE_RLHF_TEMPLATE.replace("{prompt}", ""), *texts, *extra_words]:
        for word, _ in pre.pre_tokenize_str(text):
            words.setdefault(word, None)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.padding_side = "right"
    return fast


def make_tiny_llama(tokenizer, *, hidden_size: int = 64, num_layers: int = 2,
                    num_heads: int = 4, intermediate_size: int | None = None,
                    max_position_embeddings: int = 512, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` sized for a CPU (tied embeddings)."""
    # tokenizers/transformers/torch: slow to import; only building the tiny model needs them
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_model(path: str | Path, texts: Iterable[str], **model_kwargs) -> Path:
    """Build a tokenizer over ``texts`` and a tiny Llama, save both to ``path``, return it."""
    path = Path(path)
    tokenizer = make_word_tokenizer(texts)
    model = make_tiny_llama(tokenizer, **model_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
