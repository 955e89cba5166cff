"""Per-pair safety margins from the harm labels of the pairs (docs/margins.md).

Plain SafeDPO uses one margin for every pair, ``(h~_l - h~_w) * delta``. Here the margin of a
pair can depend on the labels PKU-SafeRLHF v1 gives each response (``SafetyPair.meta``:
``severity`` [chosen, rejected] in 0..3, ``harm_categories`` [chosen, rejected]):

- Delta of a pair = the largest of ``delta_by_severity[s]`` (s = severity of its UNSAFE
  answer) and ``delta_by_category[c]`` over the UNSAFE answer's categories c, counting only
  the labels that appear in a map; ``delta`` when none does (no labels, or unmapped ones).
  The UNSAFE answer is the rejected one when it is unsafe, else the chosen one.
  margin = (h~_l - h~_w) * Delta. Empty maps give exactly plain SafeDPO.
- ``both_unsafe: by_severity``: a kept both-unsafe pair (the less severe answer chosen) gets
  margin = both_unsafe_delta * (s_l - s_w) > 0 (h~_l - h~_w = 0 would give it none).
- With ``adaptive_delta_target`` every category of the data has a Delta_c that changes during
  training (``safedpo.train.adaptive``); the per-category values then come from there, with
  the same max rule.

``PairMargins`` holds these labels as tensors indexed like the tokenized pairs, so a batch's
margins are gathered by its ``index`` tensor.
"""

from __future__ import annotations

import math

import torch

from safedpo.data.transform import both_unsafe_mode

SEVERITY_LEVELS = (0, 1, 2, 3)  # PKU-SafeRLHF v1 response_*_severity_level


def _severity_key(key) -> int | None:
    """A severity map key as an int (YAML gives ints; JSON or the command line may give
    strings), None when it is not one."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, float) and key.is_integer():
        return int(key)
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key.strip())
    return None


def _check_value(name: str, key, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: the Delta of '{key}' must be a number >= 0, got {value!r}")


def severity_map(config) -> dict[int, float]:
    return {_severity_key(k): float(v) for k, v in config.delta_by_severity.items()}


def check_margin_config(config) -> None:
    """The checks that need no data (ValueError, one line, naming the key and what is
    allowed): severity levels 0..3, Deltas >= 0, the adaptive settings, a loss with a margin."""
    allowed = ", ".join(map(str, SEVERITY_LEVELS))
    for key, value in config.delta_by_severity.items():
        level = _severity_key(key)
        if level not in SEVERITY_LEVELS:
            raise ValueError(f"delta_by_severity: unknown severity level {key!r}; allowed: "
                             f"{allowed}")
        _check_value("delta_by_severity", key, value)
    for key, value in config.delta_by_category.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"delta_by_category: a key must be a harm category name, got "
                             f"{key!r}")
        _check_value("delta_by_category", key, value)
    if config.both_unsafe_delta < 0:
        raise ValueError(f"both_unsafe_delta must be >= 0, got {config.both_unsafe_delta}")
    if config.adaptive_delta_target is not None:
        if config.adaptive_delta_lr <= 0:
            raise ValueError(f"adaptive_delta_lr must be > 0, got {config.adaptive_delta_lr}")
        if config.adaptive_delta_max < 0:
            raise ValueError(f"adaptive_delta_max must be >= 0, got "
                             f"{config.adaptive_delta_max}")
    uses = [name for name, on in (("delta_by_severity", config.delta_by_severity),
                                  ("delta_by_category", config.delta_by_category),
                                  ("adaptive_delta_target",
                                   config.adaptive_delta_target is not None)) if on]
    if uses and config.loss_type == "dpo":
        raise ValueError(f"{uses[0]} sets a safety margin, which loss_type 'dpo' does not "
                         "have; use safedpo, bso_logistic or bso_sba")


def data_categories(pairs) -> list[str]:
    """The harm category names that label at least one response of ``pairs``, sorted."""
    names = set()
    for p in pairs:
        for cats in (p.meta.get("harm_categories") or [None, None]):
            names.update(cats or [])
    return sorted(names)


def needs_pair_margins(config) -> bool:
    """Whether any option changes the plain margin (h~_l - h~_w) * delta."""
    return bool(config.delta_by_severity or config.delta_by_category
                or config.adaptive_delta_target is not None
                or both_unsafe_mode(config.keep_both_unsafe, config.both_unsafe) == "by_severity")


class PairMargins:
    """The labels of N pairs as tensors, and the per-pair margin of a batch of them.

    ``categories``: the category columns (the data's names for adaptive margins, else the
    mapped ones); ``category_delta()`` -> their fixed Deltas (C,), -inf where unmapped."""

    def __init__(self, config, pairs, categories: list[str] | None = None):
        self.delta = float(config.delta)
        self.both_unsafe_delta = float(config.both_unsafe_delta)
        by_sev = severity_map(config)
        if categories is None:
            categories = data_categories(pairs) if config.adaptive_delta_target is not None \
                else sorted(config.delta_by_category)
        self.categories = list(categories)
        col = {c: i for i, c in enumerate(self.categories)}
        by_severity = both_unsafe_mode(config.keep_both_unsafe, config.both_unsafe) \
            == "by_severity"
        n, k = len(pairs), len(self.categories)
        self.sign = torch.zeros(n)  # h~_l - h~_w
        self.severity_delta = torch.full((n,), -math.inf)
        self.mask = torch.zeros((n, k), dtype=torch.bool)  # categories of the UNSAFE answer
        self.gap = torch.zeros(n)  # s_l - s_w of both-unsafe pairs (by_severity only)
        for i, p in enumerate(pairs):
            self.sign[i] = float(p.rejected_unsafe) - float(p.chosen_unsafe)
            severity = p.meta.get("severity") or [None, None]
            cats = p.meta.get("harm_categories") or [None, None]
            if p.chosen_unsafe and p.rejected_unsafe:
                if by_severity and None not in severity:
                    self.gap[i] = float(severity[1] - severity[0])
                continue
            side = 1 if p.rejected_unsafe else 0 if p.chosen_unsafe else None
            if side is None:
                continue
            if severity[side] is not None and severity[side] in by_sev:
                self.severity_delta[i] = by_sev[severity[side]]
            for c in cats[side] or []:
                if c in col:
                    self.mask[i, col[c]] = True
        self.fixed = torch.tensor([float(config.delta_by_category.get(c, -math.inf))
                                   for c in self.categories])

    def to(self, device) -> "PairMargins":
        for name in ("sign", "severity_delta", "mask", "gap", "fixed"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def harmful_mask(self, index: torch.Tensor) -> torch.Tensor:
        """(B, C): pair is (safe chosen, unsafe rejected) and its unsafe answer has category c."""
        return self.mask[index] & (self.sign[index] > 0)[:, None]

    def pair_delta(self, index: torch.Tensor, category_delta: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """Delta of each pair of the batch, (B,): the largest matching label's Delta, else
        ``delta``. ``category_delta`` (C,) replaces the fixed map (adaptive margins)."""
        values = self.fixed if category_delta is None else category_delta
        if len(self.categories):
            per_cat = torch.where(self.mask[index], values[None, :].to(self.severity_delta),
                                  torch.tensor(-math.inf, device=values.device))
            best = torch.maximum(self.severity_delta[index], per_cat.max(dim=1).values)
        else:
            best = self.severity_delta[index]
        return torch.where(torch.isfinite(best), best, torch.full_like(best, self.delta))

    def margin(self, index: torch.Tensor, category_delta: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The margin of each pair of the batch, (B,): (h~_l - h~_w) * Delta_pair, plus
        both_unsafe_delta * (s_l - s_w) on both-unsafe pairs (by_severity)."""
        return self.sign[index] * self.pair_delta(index, category_delta) \
            + self.both_unsafe_delta * self.gap[index]
