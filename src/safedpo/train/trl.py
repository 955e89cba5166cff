"""SafeDPO inside TRL, for users of TRL's ``DPOTrainer``: two lines of a TRL script change.

    from safedpo.train.trl import SafeDPOTrainer, safety_dataset
    train_dataset = safety_dataset("PKU-Alignment/PKU-SafeRLHF-30K", split="train")
    trainer = SafeDPOTrainer(model=..., args=DPOConfig(...), train_dataset=train_dataset,
                             processing_class=tokenizer, delta=10.0)

``safety_dataset`` reads rows with PKU-SafeRLHF's columns (``is_response_0_safe``, ...: a hub
id, a local file or folder, or an in-memory ``datasets.Dataset``) through this package's
loader, applies SafeDPO's keep / swap / drop transform, and returns a ``datasets.Dataset`` with
TRL's columns ``prompt``, ``chosen``, ``rejected`` plus ``chosen_unsafe`` and
``rejected_unsafe`` (UNSAFE flags after the transform; bad rows are errors naming the row).

``SafeDPOTrainer`` is TRL's ``DPOTrainer`` with SafeDPO's margin (PAPER.md):
    L = -log sigmoid(beta * [log-ratio(chosen) - log-ratio(rejected)] - (h_l - h_w) * Delta).
TRL takes no per-pair margin, but the margin is a constant of each pair, so it folds exactly
into the reference: raising the reference log-prob of the chosen answer by
(h_l - h_w) * Delta / beta turns TRL's sigmoid loss into the loss above. The reference
log-probs are therefore precomputed (``precompute_ref_log_probs`` is turned on, with a
warning, when a config leaves it off) and shifted once, for the train and eval sets. What TRL
logs as ``rewards/chosen`` and ``rewards/margins`` then includes -(h_l - h_w) * Delta; the
loss, the gradients and the trained model are SafeDPO's. Only ``loss_type="sigmoid"`` with the
reverse KL (TRL's DPO) has this form; other settings are refused.
"""

from __future__ import annotations

import inspect
import tempfile
import warnings
from pathlib import Path

from datasets import Dataset
from trl import DPOTrainer

from safedpo.data import load_pairs, require_pairs

SAFETY_COLUMNS = ("chosen_unsafe", "rejected_unsafe")


def safety_dataset(source, *, split: str = "train", config_name: str | None = None,
                   column_map: dict[str, str] | None = None) -> Dataset:
    """PKU-SafeRLHF-schema rows -> SafeDPO's pairs as a TRL preference dataset (see above)."""
    if isinstance(source, Dataset):  # read through the same loader (and its row checks)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rows.jsonl"
            source.to_json(str(path), lines=True, force_ascii=False)
            return safety_dataset(str(path), column_map=column_map)
    pairs, stats = load_pairs(source, view="safedpo", split=split, config_name=config_name,
                              column_map=column_map)
    require_pairs(pairs, stats)
    return Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                               "chosen_unsafe": bool(p.chosen_unsafe),
                               "rejected_unsafe": bool(p.rejected_unsafe)} for p in pairs])


class SafeDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with SafeDPO's safety margin ``delta`` (not multiplied by beta)."""

    def __init__(self, *args, delta: float = 10.0, **kwargs):
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        given = inspect.signature(DPOTrainer.__init__).bind_partial(None, *args, **kwargs)
        config = given.arguments.get("args")
        if config is None:
            raise ValueError("SafeDPOTrainer needs args=DPOConfig(...): its beta sets the margin "
                             "folded into the reference")
        losses = config.loss_type if isinstance(config.loss_type, list) else [config.loss_type]
        if losses != ["sigmoid"] or config.f_divergence_type not in ("reverse_kl", None) \
                or config.label_smoothing:
            raise ValueError("SafeDPOTrainer adds SafeDPO's margin to TRL's DPO loss: it needs "
                             "loss_type='sigmoid', f_divergence_type='reverse_kl' and no label "
                             f"smoothing (got loss_type={config.loss_type!r})")
        if not config.precompute_ref_log_probs:
            warnings.warn("SafeDPOTrainer folds the safety margin into precomputed reference "
                          "log-probs: precompute_ref_log_probs is turned on", stacklevel=2)
            config.precompute_ref_log_probs = True
        for name in ("train_dataset", "eval_dataset"):
            data = given.arguments.get(name)
            for ds in (data.values() if isinstance(data, dict) else [data] if data else []):
                missing = [c for c in SAFETY_COLUMNS if c not in ds.column_names]
                if missing:
                    raise ValueError(f"{name} has no {missing} column: build it with "
                                     "safedpo.train.trl.safety_dataset(...)")
        self.delta = float(delta)
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        dataset = super()._precompute_ref_logps(dataset, name, batch_size)
        shift = self.delta / self.beta

        def add_margin(row: dict) -> dict:
            # Eq. of the loss: beta * (logratio_w - m / beta - logratio_l) = beta * (...) - m,
            # m = (h_l - h_w) * Delta, by raising the reference log-prob of the chosen answer.
            margin = float(row["rejected_unsafe"]) - float(row["chosen_unsafe"])
            return {"ref_chosen_logps": row["ref_chosen_logps"] + margin * shift}

        return dataset.map(add_margin, desc=f"SafeDPO margin for the {name} dataset")
