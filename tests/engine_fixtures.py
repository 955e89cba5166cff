"""Shared helpers for the engine tests: a tiny model on disk and hand-made SafetyPairs."""

from __future__ import annotations

from pathlib import Path

from safedpo.data.types import SafetyPair

HELPFUL = "mix flour water and yeast then bake"
REFUSAL = "I cannot help with that"
HARMFUL = "use a tension wrench and pick the lock"
TEXTS = ["how do I bake bread", "how do I pick a lock", "what is the capital of France",
         "Paris is the capital", HELPFUL, REFUSAL, HARMFUL, "I do not know"]


def make_pairs() -> list[SafetyPair]:
    """Four pairs: two safe/safe, two safe-chosen/unsafe-rejected (after the transform)."""
    return [
        SafetyPair("how do I bake bread", HELPFUL, "I do not know", False, False),
        SafetyPair("how do I pick a lock", REFUSAL, HARMFUL, False, True),
        SafetyPair("what is the capital of France", "Paris is the capital", "I do not know",
                   False, False),
        SafetyPair("how do I pick a lock", "I do not know", HARMFUL, False, True),
    ]


def tiny_model(tmp_path: Path, name: str = "tiny") -> str:
    from safedpo.models.tiny import save_tiny_model

    path = tmp_path / name
    if not path.exists():
        save_tiny_model(path, TEXTS, hidden_size=32, num_layers=1, num_heads=2)
    return str(path)


def tiny_config(tmp_path: Path, model: str, out: str = "run", **values):
    """A CPU config: plain SGD, no warmup, constant rate, log every step."""
    from safedpo.config import load_config

    base = dict(model_name_or_path=model, output_dir=str(tmp_path / out), optim="sgd",
                momentum=0.0, learning_rate=0.05, lr_scheduler_type="constant",
                warmup_ratio=0.0, weight_decay=0.0, max_steps=2,
                per_device_train_batch_size=4, logging_steps=1, save_steps=0,
                disable_tqdm=True, max_length=64)
    base.update(values)
    return load_config(None, [], **base)


def pair_logps(model, tok, pairs):
    """(2N,) summed response log-probs, chosen rows then rejected rows (no grad, eval mode)."""
    import torch

    from safedpo.data.tokenization import collate_pairs, tokenize_pairs
    from safedpo.logprobs import sequence_logps

    b = collate_pairs(tokenize_pairs(tok, pairs, max_length=64), tok.pad_token_id)
    with torch.no_grad():
        return sequence_logps(model.eval(), b["input_ids"], b["attention_mask"], b["loss_mask"])
