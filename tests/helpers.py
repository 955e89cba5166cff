"""Shared test helpers (``import helpers`` works from every test folder, see conftest.py):
paths of the repository and its fixtures, reading and writing JSON Lines, a tiny model on
disk, hand-made SafetyPairs and a CPU training config.

Also imported by processes the tests start (train/sharded_worker.py, the torchrun script of
train/test_distributed.py) with this folder on PYTHONPATH: keep it free of heavy imports at
module level."""

from __future__ import annotations

import json
from pathlib import Path

from safedpo.data.types import SafetyPair

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CONFIGS = ROOT / "configs"
FIXTURES = TESTS / "fixtures"
PKU_V1_SMALL = FIXTURES / "data" / "pku_v1_small.jsonl"  # 7 rows of PKU-SafeRLHF v1

# PKU-Alignment/PKU-SafeRLHF (v1): the columns its train/test splits carry.
PKU_V1_COLUMNS = {
    "prompt", "prompt_source", "better_response_id", "safer_response_id",
    *(k.format(i) for i in (0, 1) for k in (
        "response_{}", "response_{}_source", "is_response_{}_safe", "response_{}_harm_category",
        "response_{}_severity_level", "response_{}_sha256"))}


# --- JSON Lines ---------------------------------------------------------------------------------

def read_jsonl(path) -> list[dict]:
    """The records of a JSON Lines file, one per line."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def write_jsonl(path: Path, records) -> Path:
    """Write ``records`` as JSON Lines to ``path`` and return it."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def metrics(run_dir) -> list[dict]:
    """The logged steps of a training run: its metrics.jsonl, one dict per line."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


# --- a tiny model and hand-made pairs -----------------------------------------------------------

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


def tiny_model(tmp_path: Path, name: str = "tiny", texts=TEXTS, hidden_size: int = 32) -> str:
    """A tiny Llama (1 layer, 2 heads) with a word tokenizer over ``texts``, saved once to
    ``tmp_path / name``; returns that directory."""
    from safedpo.models.tiny import save_tiny_model

    path = Path(tmp_path) / name
    if not path.exists():
        save_tiny_model(path, texts, hidden_size=hidden_size, num_layers=1, num_heads=2)
    return str(path)


def load_tiny_model(tmp_path: Path, texts, name: str = "m"):
    """(path, model, tokenizer) of ``tiny_model(tmp_path, name, texts)``, loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(tiny_model(tmp_path, name, texts))
    return path, AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


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
