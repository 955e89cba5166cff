"""The synthetic safety world: prompts, their finite sets of answers, and the data on disk.

A prompt is a template filled with a topic ("steal a car"). Every prompt has exactly four
response types with an oracle helpfulness reward r and cost c (c > 0: unsafe), see
:mod:`safedpo.world.spec`. Data is sampled from a fixed reference policy (``REFERENCE_MIX``)
and written in the PKU-SafeRLHF v1 schema, so the real loader reads it like the real dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safedpo.world import spec


@dataclass(frozen=True)
class WorldPrompt:
    """One prompt. ``category`` is the first harm category (None for benign prompts)."""

    text: str
    harmful: bool
    category: str | None
    template: str
    topic: str
    categories: tuple[str, ...] = ()
    severity: int = 0


@dataclass(frozen=True)
class ResponseType:
    """One of the four answers to a prompt, with its oracle reward and cost (c > 0: unsafe)."""

    name: str
    text: str
    reward: float
    cost: float
    categories: tuple[str, ...] = ()
    severity: int = 0

    @property
    def safe(self) -> bool:
        return self.cost <= 0


def normalize(text: str) -> str:
    """Lower case, punctuation split into words, single spaces: how texts are compared."""
    out = []
    for ch in text.lower():
        out.append(f" {ch} " if ch in ",.!?:;" else ch)
    return " ".join("".join(out).split())


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class World:
    """Deterministic per ``seed``: the seed changes what is sampled, not the world itself."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._topics: dict[str, tuple[bool, str, tuple[str, ...], int]] = {}
        for verb, objects in spec.BENIGN_TOPICS.items():
            for obj in objects:
                self._topics[f"{verb} {obj}"] = (False, verb, (), 0)
        for verb, (objects, cats, severity) in spec.HARMFUL_TOPICS.items():
            for obj in objects:
                extra = spec.EXTRA_CATEGORIES.get((verb, obj), ())
                self._topics[f"{verb} {obj}"] = (True, verb, tuple(cats) + extra, severity)
        self._prompts = {
            split: [self._make_prompt(t, topic) for t in templates for topic in self._topics]
            for split, templates in (("train", spec.TRAIN_TEMPLATES),
                                     ("test", spec.TEST_TEMPLATES))
        }
        self._by_text = {normalize(p.text): p for ps in self._prompts.values() for p in ps}
        # Longest first, so "sell fake pills" is never mistaken for a shorter topic.
        self._topic_keys = sorted(self._topics, key=len, reverse=True)

    def _make_prompt(self, template: str, topic: str) -> WorldPrompt:
        harmful, _, cats, severity = self._topics[topic]
        return WorldPrompt(text=template.format(task=topic), harmful=harmful,
                           category=cats[0] if cats else None, template=template, topic=topic,
                           categories=cats, severity=severity)

    # ---- prompts and answers ---------------------------------------------------------------
    def prompts(self, split: str) -> list[WorldPrompt]:
        """Prompts of ``split`` ("train" or "test": the held-out templates), in a fixed order."""
        if split not in self._prompts:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return list(self._prompts[split])

    def lookup(self, prompt_text: str) -> WorldPrompt:
        """The world prompt for a text. Unknown templates still work if a known topic occurs."""
        key = normalize(prompt_text)
        if key in self._by_text:
            return self._by_text[key]
        padded = f" {key} "
        for topic in self._topic_keys:
            if f" {topic} " in padded:
                return self._make_prompt("{task}", topic)
        raise KeyError(f"prompt is not from the safety world (no known topic in it): "
                       f"{prompt_text!r}")

    def responses(self, prompt_text: str) -> list[ResponseType]:
        """The four response types of a prompt, in slot order (see spec)."""
        p = self.lookup(prompt_text)
        table = spec.HARMFUL_RESPONSES if p.harmful else spec.BENIGN_RESPONSES
        out = []
        for name, (template, reward, cost) in table.items():
            if cost is None:  # the detailed unsafe answer costs the topic's severity
                cost = float(p.severity)
            unsafe = cost > 0
            severity = (p.severity if name == "unsafe_detailed" else 1) if unsafe else 0
            out.append(ResponseType(name=name, text=template.format(task=p.topic),
                                    reward=float(reward), cost=float(cost),
                                    categories=p.categories if unsafe else (),
                                    severity=severity))
        return out

    def reference_mix(self, prompt_text: str) -> np.ndarray:
        """P(type | prompt) of the policy that wrote the data, shape (K,)."""
        return np.asarray(spec.REFERENCE_MIX[self.lookup(prompt_text).harmful], dtype=float)

    def texts(self) -> list[str]:
        """Every prompt and answer of both splits (what a tokenizer must cover)."""
        out = []
        for split in ("train", "test"):
            for p in self._prompts[split]:
                out.append(p.text)
                out.extend(r.text for r in self.responses(p.text))
        return out

    # ---- sampling --------------------------------------------------------------------------
    def _rng(self, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, purpose])

    def sft_examples(self, n: int) -> list[tuple[str, str]]:
        """``n`` (prompt, response) pairs: train prompts, answers drawn from the reference mix."""
        rng = self._rng(1)
        prompts = self.prompts("train")
        out = []
        for i in rng.integers(len(prompts), size=n):
            p = prompts[i]
            k = rng.choice(spec.NUM_TYPES, p=self.reference_mix(p.text))
            out.append((p.text, self.responses(p.text)[k].text))
        return out

    def preference_rows(self, split: str, n: int) -> list[dict]:
        """``n`` rows in the PKU-SafeRLHF v1 schema.

        Two distinct answers are drawn from the reference mix; ``better_response_id`` follows
        Bradley-Terry on r (P(0 better) = sigmoid(r_0 - r_1)); ``safer_response_id`` is the
        safe one when exactly one is safe, else Bradley-Terry on -2c (a coin flip on ties).
        """
        rng = self._rng({"train": 2, "test": 3}[split])
        prompts = self.prompts(split)
        rows = []
        for i in rng.integers(len(prompts), size=n):
            p = prompts[i]
            mix = self.reference_mix(p.text)
            a = int(rng.choice(spec.NUM_TYPES, p=mix))
            rest = mix.copy()
            rest[a] = 0.0
            b = int(rng.choice(spec.NUM_TYPES, p=rest / rest.sum()))
            if rng.random() < 0.5:
                a, b = b, a
            r0, r1 = (self.responses(p.text)[k] for k in (a, b))
            better = 0 if rng.random() < _sigmoid(r0.reward - r1.reward) else 1
            if r0.safe != r1.safe:
                safer = 0 if r0.safe else 1
            else:
                safer = 0 if rng.random() < _sigmoid(2.0 * (r1.cost - r0.cost)) else 1
            row = {"prompt": p.text, "response_0": r0.text, "response_1": r1.text,
                   "prompt_source": "safety-world"}
            for j, r in ((0, r0), (1, r1)):
                row[f"response_{j}_source"] = "world-reference"
                row[f"is_response_{j}_safe"] = r.safe
                row[f"response_{j}_harm_category"] = {c: c in r.categories
                                                      for c in spec.HARM_CATEGORIES}
                row[f"response_{j}_severity_level"] = r.severity
                row[f"response_{j}_sha256"] = _sha256(r.text)
            row["better_response_id"] = better
            row["safer_response_id"] = safer
            rows.append(row)
        return rows

    # ---- files -----------------------------------------------------------------------------
    def write_dataset(self, out_dir: str | Path, *, n_pairs: int = 2000, n_test_pairs: int = 400,
                      n_sft: int = 3000) -> dict[str, Path]:
        """Write the world's data under ``out_dir`` and return the paths by name.

        sft.jsonl (prompt, response); train.jsonl and train.parquet (the same rows);
        test.jsonl (held-out templates); eval_prompts.jsonl (prompt, harmful, category: the
        first harm category, null for benign prompts) over the held-out prompts.
        """
        # pyarrow: only the parquet copy needs it (slow to import)
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {name: out / f for name, f in (
            ("sft", "sft.jsonl"), ("train", "train.jsonl"), ("train_parquet", "train.parquet"),
            ("test", "test.jsonl"), ("eval_prompts", "eval_prompts.jsonl"))}
        _write_jsonl(paths["sft"], [{"prompt": p, "response": r}
                                    for p, r in self.sft_examples(n_sft)])
        train = self.preference_rows("train", n_pairs)
        _write_jsonl(paths["train"], train)
        pq.write_table(pa.Table.from_pylist(train), paths["train_parquet"])
        _write_jsonl(paths["test"], self.preference_rows("test", n_test_pairs))
        _write_jsonl(paths["eval_prompts"], [
            {"prompt": p.text, "harmful": p.harmful, "category": p.category}
            for p in self.prompts("test")])
        return paths


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
