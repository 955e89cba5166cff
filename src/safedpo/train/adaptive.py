"""Adaptive per-category safety margins (Cat-DPO style, arXiv 2604.17299, our reading; its code
is not published). docs/margins.md has the rule and its reasons.

Every harm category c of the data has a margin Delta_c, initially ``delta_by_category[c]``
(else ``delta``). After every optimizer step, from that step's pairs (all micro-batches, all
processes):

    m_c     = mean over c's harmful pairs of the implicit-reward margin
              beta * (log-ratio chosen - log-ratio rejected)      (Delta not included)
    Delta_c <- clip(Delta_c + eta * (target - m_c), 0, Delta_max)  if the step had such pairs

where c's harmful pairs are the (safe chosen, unsafe rejected) pairs whose unsafe answer has
category c. So Delta_c rises while the policy separates c's unsafe answers by less than the
target and relaxes once it does better. Per step (not per logging step) so that the state is
just the Deltas: a checkpoint saves them, and a resumed run continues bit for bit.
"""

from __future__ import annotations

import torch


class AdaptiveDelta:
    def __init__(self, categories: list[str], initial: list[float], *, target: float,
                 lr: float, max_delta: float, device=None):
        self.categories = list(categories)
        self.target, self.lr, self.max_delta = float(target), float(lr), float(max_delta)
        self.value = torch.tensor(initial, dtype=torch.float32, device=device)
        self.acc = torch.zeros((2, len(self.categories)), dtype=torch.float32, device=device)

    @classmethod
    def from_config(cls, config, categories: list[str], device=None) -> "AdaptiveDelta":
        initial = [float(config.delta_by_category.get(c, config.delta)) for c in categories]
        return cls(categories, initial, target=config.adaptive_delta_target,
                   lr=config.adaptive_delta_lr, max_delta=config.adaptive_delta_max,
                   device=device)

    def observe(self, margins: torch.Tensor, harmful: torch.Tensor) -> dict:
        """Add one micro-batch: ``margins`` (B,) implicit-reward margins, ``harmful`` (B, C)
        bool. -> its metric sums {safety/margin/c: (sum, count), safety/delta/c: (Delta_c, 1)}."""
        h = harmful.to(torch.float32)
        sums = (h * margins.detach().to(torch.float32)[:, None]).sum(0)
        counts = h.sum(0)
        self.acc += torch.stack([sums, counts])
        stats = {}
        for i, c in enumerate(self.categories):
            stats[f"safety/margin/{c}"] = (sums[i], counts[i])
            stats[f"safety/delta/{c}"] = (self.value[i], 1)
        return stats

    def step(self, accelerator=None) -> None:
        """The update after an optimizer step (collective across processes when there are
        several); the accumulated sums are cleared. No host sync."""
        acc = self.acc
        if accelerator is not None and accelerator.num_processes > 1:
            acc = accelerator.reduce(acc.clone(), "sum")
        sums, counts = acc[0], acc[1]
        mean = sums / counts.clamp(min=1)
        moved = (self.value + self.lr * (self.target - mean)).clamp(0.0, self.max_delta)
        self.value = torch.where(counts > 0, moved, self.value)
        self.acc.zero_()

    def state_dict(self) -> dict:
        return {"categories": list(self.categories), "delta": self.value.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if list(state["categories"]) != self.categories:
            raise ValueError(f"the checkpoint's adaptive Delta has categories "
                             f"{state['categories']}, this run's data {self.categories}")
        self.value = torch.tensor(state["delta"], dtype=torch.float32,
                                  device=self.value.device)
