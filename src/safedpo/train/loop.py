"""The training loop: preference losses (SafeDPO, DPO, baselines) and SFT share it. The
objectives live in ``safedpo.train.objectives``, everything around the loop in
``safedpo.train.runtime``.

One run, top to bottom (``run_objective``):
1. An ``Accelerator`` (DDP / DeepSpeed / FSDP come from ``accelerate launch``, and the run
   stops if accelerate resolved anything else, see ``safedpo.train.distributed``; bf16 autocast
   where the device supports it; gradient accumulation).
2. The model sources and the run dir are checked (a previous run is never overwritten
   silently; resuming is explicit and only with the same settings), and the run dir locked
   (one run per dir).
3. Model + tokenizer load (the objective's ``load_model``: the policy, LoRA optional; a
   sequence classifier for ``safedpo rm``/``cm``); the data is tokenized once, kept in memory.
   Only then are a replaced run's files removed and the resolved ``config.yaml`` written.
4. The objective prepares itself. For preference losses that means the reference: log-probs
   cached on disk (``precompute_ref_log_probs``, computed once with the initial policy or the
   reference model), else per batch from the adapter-disabled policy (LoRA) or a frozen model.
5. Optimizer steps. Step k of epoch e uses a fixed slice of a permutation seeded by (seed, e),
   so a resumed run needs only the step number to continue on exactly the same batches. A
   micro-batch of B pairs is ONE forward over 2B rows (chosen rows, then rejected rows);
   loss = LOSSES[loss_type](...).mean() (+ rpo_alpha * chosen NLL).
6. Around each step, ``safedpo.train.driver.StepDriver`` (shared with the PPO-Lagrangian
   loop): every ``logging_steps`` metrics are summed across processes (the only host syncs)
   and written to metrics.jsonl and trackers; a non-finite loss stops the run with an error
   (the last checkpoint is kept). Every ``save_steps``: a checkpoint, after checking that the
   weights and optimizer state are finite (a finite loss does not prove its update was).
   SIGINT/SIGTERM: a checkpoint, then return (``summary["interrupted"]`` is True).
7. ``model/`` (full model or LoRA adapter, safetensors, + tokenizer) and train_summary.json
   (with what really ran: ``"distributed": {"type": "DEEPSPEED", "zero_stage": 3, ...}``).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable

import torch
from accelerate.utils import set_seed
from torch.distributed.tensor import DTensor

from safedpo.config import TrainConfig, validate
from safedpo.data import DataError, load_pairs, load_sft_examples, require_pairs
from safedpo.train import distributed
from safedpo.train.driver import StepDriver
from safedpo.train.engines import check_settings
from safedpo.train.objectives import (
    PreferenceObjective,
    RunContext,
    SFTObjective,
    check_margin_labels,
)
from safedpo.train.runtime import (
    check_models,
    check_output_dir,
    end_run,
    fill_deepspeed_config,
    hold_output_dir,
    make_accelerator,
    make_optimizer,
    prepare_output_dir,
    require,
    save_model,
    to_device,
)

Callback = Callable[[dict], Any]


def train(config: TrainConfig, pairs=None, *, callbacks: list[Callback] = ()) -> dict:
    """Preference training with ``LOSSES[config.loss_type]``. ``pairs``: list of SafetyPair,
    or None to load ``config.dataset`` with ``config.view``. Returns the train summary.
    ``callbacks`` are called with each logged metrics dict (on every process)."""
    check_settings("train", config)
    validate(config)  # a config built in code is checked as a resolved one is
    pairs, stats = config_pairs(config) if pairs is None else (pairs, None)
    check_margin_labels(config, pairs)  # the data's harm categories, before any model loads
    return run_objective(config, PreferenceObjective(config), list(pairs), stats, callbacks)


def config_pairs(config: TrainConfig) -> tuple[list, dict]:
    """The pairs of ``config.dataset`` in ``config.view``, with the load stats; a DataError that
    says why when the view keeps none."""
    require(config.dataset, "dataset")
    pairs, stats = load_pairs(
        config.dataset, view=config.view, split=config.dataset_split,
        config_name=config.dataset_config, column_map=config.column_map,
        skip_invalid=config.skip_invalid, keep_both_unsafe=config.keep_both_unsafe,
        both_unsafe=config.both_unsafe)
    require_pairs(pairs, stats)
    return pairs, stats


def sft(config: TrainConfig, examples=None, *, callbacks: list[Callback] = ()) -> dict:
    """Supervised fine-tuning (mean NLL of response tokens). ``examples``: list of
    (prompt, response), or None to load ``config.dataset``. Returns the train summary."""
    check_settings("sft", config)
    validate(config)
    if examples is None:
        require(config.dataset, "dataset")
        examples = load_sft_examples(config.dataset, split=config.dataset_split,
                                     prompt_column=config.prompt_column,
                                     response_column=config.response_column)
        if not examples:
            raise DataError(f"{config.dataset}: no SFT examples (split '{config.dataset_split}')")
    return run_objective(config, SFTObjective(config), list(examples), None, callbacks)


# --- the loop -------------------------------------------------------------------------------

def run_objective(config: TrainConfig, objective, data: list, data_stats,
                  callbacks) -> dict:
    check_models(config)
    resume = check_output_dir(config)
    t_begin = time.time()
    accelerator = make_accelerator(config)
    lock = None
    try:
        lock = hold_output_dir(config, accelerator)
        resume = check_output_dir(config)  # again: no other run can change the dir now
        set_seed(config.seed)
        model, tokenizer, keep_logits = objective.load_model(config)
        items = objective.tokenize(tokenizer, data)
        if not items:
            raise DataError("no training data (0 pairs/examples after loading)")
        out = prepare_output_dir(config, accelerator, resume)  # the previous run goes only now
        # One optimizer step = micro-batches x processes x per-device batch.
        per_device, accum = config.per_device_train_batch_size, config.gradient_accumulation_steps
        rank, nproc = accelerator.process_index, accelerator.num_processes
        global_batch = per_device * nproc * accum
        steps_per_epoch = math.ceil(len(items) / global_batch)
        total_steps = config.max_steps if config.max_steps > 0 else \
            math.ceil(config.num_train_epochs * steps_per_epoch)
        optimizer, scheduler = make_optimizer(model, config, total_steps)
        if accelerator.state.deepspeed_plugin is not None:  # no DataLoader tells it the batch
            fill_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, config)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        ran = distributed.describe(accelerator, model, distributed.requested())
        run = RunContext(config, accelerator, model, tokenizer, items, keep_logits, out)
        t_train = time.time()
        objective.prepare(run)  # before resuming: the policy still has its initial weights

        initial = {"global_step": 0, "train_seconds": 0.0, "num_tokens": 0}
        with StepDriver(config, accelerator, out, resume, name=objective.name,
                        total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                        initial=initial, callbacks=callbacks, t_start=t_train,
                        postfix=lambda last: f"tok/s={driver.tokens_per_second():.0f}" + (
                            f" loss={last['loss']:.4f}" if "loss" in last else ""),
                        extra_state=objective.state_dict) as driver:
            objective.load_state_dict(driver.state)  # a resumed run's objective state
            model.train()
            for step in driver.steps():
                indices = batch_indices(len(items), step, steps_per_epoch, global_batch,
                                        config.seed)
                for micro in range(accum):
                    lo = (micro * nproc + rank) * per_device
                    local = indices[lo:lo + per_device]
                    batch = objective.collate([items[i] for i in local], tokenizer.pad_token_id)
                    batch["index"] = torch.tensor(local)
                    batch = to_device(batch, accelerator.device)
                    with accelerator.accumulate(model):  # no DDP sync until the last micro-batch
                        loss, stats = objective.loss(model, batch)
                        accelerator.backward(loss)  # scales by 1/accum
                        if accelerator.sync_gradients and config.max_grad_norm:
                            norm = accelerator.clip_grad_norm_(model.parameters(),
                                                               config.max_grad_norm)
                            if isinstance(norm, DTensor):  # FSDP2: replicated on all
                                norm = norm.full_tensor()
                            if norm is not None:
                                stats["grad_norm"] = (torch.as_tensor(norm).float(), 1)
                        optimizer.step()  # a no-op until the last micro-batch
                        optimizer.zero_grad()
                    driver.record(stats, loss, step, tokens=batch["num_tokens"] * nproc)
                objective.end_step()  # e.g. the adaptive margins' update
                lr = scheduler.get_last_lr()[0]  # the rate this step used
                scheduler.step()
                if driver.end_step(step, {"learning_rate": lr, "num_tokens": driver.num_tokens},
                                   model, optimizer):
                    break
        driver.finish(model, optimizer)
        if not driver.interrupted:
            save_model(accelerator, model, tokenizer, out, config)
        return driver.write_summary(driver.summary(
            t_begin, num_examples=len(items), distributed=ran, data=data_stats))
    finally:
        if lock is not None:
            lock.close()
        end_run(accelerator)


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def batch_indices(n: int, step: int, steps_per_epoch: int, global_batch: int,
                   seed: int) -> list[int]:
    """Pair indices of optimizer step ``step`` (all processes, all micro-batches). The last
    batch of an epoch wraps around to its start, so every process gets a full batch."""
    epoch, k = divmod(step, steps_per_epoch)
    order = _epoch_order(n, seed, epoch)
    return [order[(k * global_batch + j) % n] for j in range(global_batch)]


