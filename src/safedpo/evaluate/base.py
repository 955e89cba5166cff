"""The scorer interface every judge implements (``safedpo.evaluate.scorers`` lists the
kinds), and the device/padding defaults the model scorers share."""

from __future__ import annotations

from collections.abc import Sequence

import torch

KINDS = ("reward", "cost", "refusal", "flag", "outcome")


class Scorer:
    """Base class. Subclasses set ``name`` (the key in generations.jsonl's ``scores``) and
    ``kind`` (one of KINDS) and implement ``score``."""

    name: str = "scorer"
    kind: str = "reward"

    def bind(self, records: Sequence[dict]) -> None:
        """Called by ``evaluate`` with the prompt records (keys prompt, harmful, category)
        before scoring. Default: nothing; scorers that need prompt metadata override it."""

    def check(self, prompts: Sequence[str]) -> None:
        """Called by ``evaluate`` BEFORE generating: raise a clear error if these prompts
        cannot be scored. Default: any prompt can."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r})"


def default_device_dtype(device, dtype):
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str) and dtype != "auto":  # "auto": the checkpoint's own dtype
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def pad_id(tokenizer) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0
