"""The training objectives: SFT (mean NLL per response token) and the preference losses
(``LOSSES[loss_type]``), with the reference: log-probs of the adapter-disabled policy (LoRA),
of the initial policy or of a frozen reference model, per batch or computed once and cached
on disk (``precompute_ref_log_probs``)."""

from __future__ import annotations

import difflib
import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule
from tqdm.auto import tqdm

from safedpo.config import ConfigError, TrainConfig
from safedpo.data.margins import PairMargins, data_categories, needs_pair_margins
from safedpo.data.tokenization import (
    collate_pairs,
    collate_sft,
    collate_shared_pairs,
    tokenize_pairs,
    tokenize_sft,
)
from safedpo.logprobs import (
    accepts_logits_to_keep,
    sequence_logps_and_counts,
    shared_pair_logps_and_counts,
    shared_prompt_support,
)
from safedpo.losses import LOSSES
from safedpo.models.loading import load_model_and_tokenizer
from safedpo.train import checkpoint as ckpt
from safedpo.train.adaptive import AdaptiveDelta
from safedpo.train.runtime import load_policy, to_device


@dataclass
class RunContext:
    """What an objective may use: the prepared model and the tokenized data."""
    config: TrainConfig
    accelerator: Any
    model: Any
    tokenizer: Any
    items: list[dict]
    keep_logits: bool
    output_dir: Path


class Objective:
    """What the loop needs of an objective: tokenize (once, before the loop), collate,
    prepare (after ``accelerator.prepare``) and loss. Subclasses set the two data functions."""

    tokenize_fn = collate = None  # staticmethods: tokenize_sft/collate_sft, ...

    def __init__(self, config: TrainConfig):
        self.config = config

    def load_model(self, config: TrainConfig):
        """-> (model, tokenizer, whether it takes ``logits_to_keep``): the causal LM policy."""
        return load_policy(config)

    # An objective with its own training state (saved with every checkpoint) overrides these.
    def end_step(self) -> None:
        """After each optimizer step."""

    def state_dict(self) -> dict:
        """What a checkpoint must hold to resume this objective exactly (JSON-able)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore from the trainer state of a checkpoint (``state_dict``'s keys among others)."""

    def tokenize(self, tokenizer, examples):
        c = self.config
        return self.tokenize_fn(tokenizer, examples, prompt_template=c.prompt_template,
                                max_length=c.max_length, max_prompt_length=c.max_prompt_length,
                                disable_tqdm=c.disable_tqdm)


class SFTObjective(Objective):
    """Mean negative log-likelihood per response token."""

    name = "sft"
    tokenize_fn, collate = staticmethod(tokenize_sft), staticmethod(collate_sft)

    def prepare(self, run: RunContext):
        self.run = run

    def loss(self, model, batch):
        sums, counts = sequence_logps_and_counts(
            model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
            batch["logits_start"], keep_logits=self.run.keep_logits)
        tokens = counts.sum()
        loss = -sums.sum() / tokens.clamp(min=1)
        return loss, {"loss": (-sums.sum(), tokens)}


def check_margin_labels(config, pairs) -> None:
    """The checks that need the data, before training: every ``delta_by_category`` key is a
    category of the data; adaptive margins need categories. ConfigError naming the key and
    the allowed names."""
    if not config.delta_by_category and config.adaptive_delta_target is None:
        return
    names = data_categories(pairs)
    if not names:
        key = "delta_by_category" if config.delta_by_category else "adaptive_delta_target"
        raise ConfigError(f"{key}: the data has no harm categories (PKU-SafeRLHF v1 "
                          "response_*_harm_category columns), so no pair can match one")
    for key in config.delta_by_category:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"delta_by_category: unknown harm category '{key}'{hint}; the "
                              f"data has: {', '.join(names)}")


class PreferenceObjective(Objective):
    """LOSSES[loss_type] on one forward per pair ([prompt, chosen, rejected], ``share_prompt``)
    or on 2B rows (chosen rows, then rejected rows); reference log-probs from cache or model."""

    tokenize_fn = staticmethod(tokenize_pairs)

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.name = config.loss_type
        self.cache = None  # {chosen_sum, chosen_count, rejected_sum, rejected_count}: (N,)
        self.ref_forward = None  # batch -> (sums (2B,), counts (2B,))
        self.shared = False  # decided in prepare(), from the models
        self.margins: PairMargins | None = None  # per-pair margins (docs/margins.md)
        self.adaptive: AdaptiveDelta | None = None

    def tokenize(self, tokenizer, examples):
        if needs_pair_margins(self.config):
            self.margins = PairMargins(self.config, examples)
            if self.config.adaptive_delta_target is not None:
                self.adaptive = AdaptiveDelta.from_config(self.config, self.margins.categories)
        return super().tokenize(tokenizer, examples)

    def end_step(self) -> None:
        if self.adaptive is not None:
            self.adaptive.step(self.run.accelerator)

    def state_dict(self) -> dict:
        return {"adaptive_delta": self.adaptive.state_dict()} if self.adaptive else {}

    def load_state_dict(self, state: dict) -> None:
        if self.adaptive is not None and "adaptive_delta" in state:
            self.adaptive.load_state_dict(state["adaptive_delta"])

    def collate(self, items: list[dict], pad_token_id: int) -> dict:
        return (collate_shared_pairs if self.shared else collate_pairs)(items, pad_token_id)

    def prepare(self, run: RunContext):
        c = self.config
        self.run = run
        if self.margins is not None:
            self.margins.to(run.accelerator.device)
        if self.adaptive is not None:
            self.adaptive = AdaptiveDelta.from_config(c, self.margins.categories,
                                                      run.accelerator.device)
        ref_name = c.ref_model_name_or_path or c.model_name_or_path
        ref_is_policy = ref_name == c.model_name_or_path
        if ref_is_policy and (c.use_peft or c.precompute_ref_log_probs):
            # The policy with its LoRA adapter disabled is the reference at every step; the
            # full policy is the reference before its first step (used once, to precompute).
            forward = policy_reference(run, disable_adapter=c.use_peft)
        else:
            forward = frozen_reference(run, ref_name)
        self.shared = self._share_prompt(run, forward)
        if not c.precompute_ref_log_probs:
            self.ref_forward = forward
            return
        key = {"version": 1, "reference": ckpt.weights_fingerprint(
                   ref_name, c.gguf_file if ref_is_policy else None),
               "dtype": c.dtype, "mixed_precision": str(run.accelerator.mixed_precision),
               "data": ckpt.data_fingerprint(run.items), "max_length": c.max_length,
               "max_prompt_length": c.max_prompt_length, "prompt_template": c.prompt_template,
               **({"share_prompt": True} if self.shared else {})}
        path = ckpt.ref_cache_path(c.ref_cache_dir or run.output_dir / "ref_cache", key)
        self.cache = ckpt.load_ref_cache(path)
        if self.cache is None:
            run.model.eval()
            self.cache = _precompute(run, forward, self.collate)
            run.model.train()
            _reshard(run.model)
            if run.accelerator.is_main_process:
                ckpt.save_ref_cache(path, self.cache, key)
            run.accelerator.wait_for_everyone()
        self.cache = {k: v.to(run.accelerator.device) for k, v in self.cache.items()}

    def _share_prompt(self, run: RunContext, forward) -> bool:
        """Whether pairs run as one shared-prompt row: asked for, and the policy (and a
        separate reference) can take the mask; else a one-line notice says why not."""
        if not self.config.share_prompt:
            return False
        why = shared_prompt_support(run.model)
        ref = getattr(forward, "model", None)
        if why is None and ref is not None:
            why = shared_prompt_support(ref)
            why = why and f"the reference: {why}"
        if why is not None and run.accelerator.is_main_process:
            print(f"[safedpo] share_prompt: two sequences per pair instead ({why})",
                  file=sys.stderr)
        return why is None

    def reference(self, batch):
        """Reference (sums, counts), each (2B,): chosen rows then rejected rows."""
        if self.cache is None:
            return self.ref_forward(batch)
        idx, cache = batch["index"], self.cache
        return (torch.cat([cache["chosen_sum"][idx], cache["rejected_sum"][idx]]),
                torch.cat([cache["chosen_count"][idx], cache["rejected_count"][idx]]))

    def loss(self, model, batch):
        c, b = self.config, len(batch["index"])
        ref_sums, ref_counts = self.reference(batch)
        sums, counts = pair_logps(model, batch, self.run.keep_logits)
        logps = sums / counts.clamp(min=1) if c.logps_average else sums
        ref = ref_sums / ref_counts.clamp(min=1) if c.logps_average else ref_sums
        cu, ru = batch["chosen_unsafe"], batch["rejected_unsafe"]
        extra = {}
        if self.margins is not None:
            idx = batch["index"]
            extra["margin"] = self.margins.margin(
                idx, self.adaptive.value if self.adaptive is not None else None)
        losses, r_c, r_r = LOSSES[c.loss_type](
            logps[:b], logps[b:], ref[:b], ref[b:], cu, ru,
            beta=c.beta, delta=c.delta, **extra, **c.loss_kwargs)
        loss = losses.mean()
        margins = r_c - r_r
        ru_f = ru.float()
        stats = {"rewards/chosen": (r_c.sum(), b), "rewards/rejected": (r_r.sum(), b),
                 "rewards/margins": (margins.sum(), b),
                 "rewards/accuracies": ((r_c > r_r).float().sum(), b),
                 "logps/chosen": (logps[:b].detach().sum(), b),
                 "logps/rejected": (logps[b:].detach().sum(), b),
                 "safety/unsafe_rejected_frac": (ru_f.sum(), b),
                 "safety/margin_unsafe": ((margins * ru_f).sum(), ru_f.sum())}
        if "margin" in extra:
            stats["safety/pair_margin"] = (extra["margin"].detach().sum(), b)
        if self.adaptive is not None:
            stats.update(self.adaptive.observe(margins, self.margins.harmful_mask(idx)))
        if c.rpo_alpha is not None:
            # RPO: mean NLL per chosen token, added to the preference loss.
            nll = -sums[:b].sum() / counts[:b].sum().clamp(min=1)
            loss = loss + c.rpo_alpha * nll
            stats["nll_loss"] = (nll.detach() * b, b)
        stats["loss"] = (loss.detach() * b, b)
        return loss, stats


def pair_logps(model, batch: dict, keep_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob sums, token counts), each (2B,): chosen then rejected, of a shared-prompt
    batch (``collate_shared_pairs``) or of a 2B-row one (``collate_pairs``)."""
    if "pair_mask" in batch:
        return shared_pair_logps_and_counts(model, batch, keep_logits)
    return sequence_logps_and_counts(model, batch["input_ids"], batch["attention_mask"],
                                     batch["loss_mask"], batch["logits_start"],
                                     keep_logits=keep_logits)


def _no_grad_logps(model, keep_logits: bool, context):
    """batch -> (log-prob sums, token counts) of ``model`` without gradients, inside
    ``context()`` (a fresh context manager per call)."""
    def forward(batch):
        with torch.no_grad(), context():
            return pair_logps(model, batch, keep_logits)
    return forward


def policy_reference(run: RunContext, disable_adapter: bool):
    """The reference as the policy itself: with its LoRA adapter disabled, or (no adapter)
    the policy before training, when the reference log-probs are precomputed."""
    model = run.model
    unwrapped = run.accelerator.unwrap_model(model)
    return _no_grad_logps(model, run.keep_logits,
                          unwrapped.disable_adapter if disable_adapter else nullcontext)


def frozen_reference(run: RunContext, name: str):
    """A separate reference model, frozen, on this process's device (not sharded)."""
    c = run.config
    model, tokenizer = load_model_and_tokenizer(
        name, trust_remote_code=c.trust_remote_code, dtype=c.dtype,
        gguf_file=c.gguf_file if name == c.model_name_or_path else None)
    if tokenizer.get_vocab() != run.tokenizer.get_vocab():
        raise ConfigError(f"reference model {name} has a different vocabulary than the policy "
                          f"{c.model_name_or_path}; they must share a tokenizer")
    model.requires_grad_(False).eval().to(run.accelerator.device)
    forward = _no_grad_logps(model, accepts_logits_to_keep(model), run.accelerator.autocast)
    forward.model = model  # its architecture decides share_prompt too
    return forward


def _reshard(model):
    """FSDP2 keeps modules that do not reshard after forward (accelerate: the embeddings,
    final norm and head) unsharded after a forward without backward; loading a checkpoint
    into them then fails. Shard them again."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _precompute(run: RunContext, forward, collate) -> dict[str, torch.Tensor]:
    """Reference log-prob sums/counts of every pair, (N,) each, sharded over processes.
    Every process runs the same number of forwards (ZeRO-3 forwards are collective)."""
    acc, n = run.accelerator, len(run.items)
    per = math.ceil(n / acc.num_processes)
    mine = list(range(acc.process_index, n, acc.num_processes))
    mine += [mine[-1] if mine else 0] * (per - len(mine))
    bs = run.config.per_device_train_batch_size
    rows = []
    for i in tqdm(range(0, per, bs), desc="reference log-probs", leave=False,
                  disable=run.config.disable_tqdm or not acc.is_main_process):
        idx = mine[i:i + bs]
        batch = to_device(collate([run.items[j] for j in idx], run.tokenizer.pad_token_id),
                           acc.device)
        sums, counts = forward(batch)
        b = len(idx)
        rows.append(torch.stack([torch.tensor(idx, device=acc.device, dtype=torch.float64),
                                 sums[:b].double(), counts[:b].double(),
                                 sums[b:].double(), counts[b:].double()], dim=1))
    allrows = acc.gather(torch.cat(rows)).cpu()
    order = allrows[:, 0].long()
    out = {}
    for col, name in enumerate(("chosen_sum", "chosen_count", "rejected_sum", "rejected_count"), 1):
        out[name] = torch.zeros(n, dtype=torch.float32)
        out[name][order] = allrows[:, col].float()
    return out
