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
6. Every ``logging_steps``: metrics are summed across processes (the only host syncs), written
   to metrics.jsonl and trackers; a non-finite loss stops the run with an error (the last
   checkpoint is kept). Every ``save_steps``: a checkpoint, after checking that the weights
   and optimizer state are finite (a finite loss does not prove its update was).
   SIGINT/SIGTERM: a checkpoint, then return (``summary["interrupted"]`` is True).
7. ``model/`` (full model or LoRA adapter, safetensors, + tokenizer) and train_summary.json
   (with what really ran: ``"distributed": {"type": "DEEPSPEED", "zero_stage": 3, ...}``).
"""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Any, Callable

import torch
from accelerate.utils import set_seed
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from safedpo.config import SAFERLHF, ConfigError, TrainConfig, validate
from safedpo.data import DataError, load_pairs, load_sft_examples, require_pairs
from safedpo.train import checkpoint as ckpt
from safedpo.train import distributed
from safedpo.train.objectives import PreferenceObjective, RunContext, SFTObjective
from safedpo.train.runtime import (
    MetricSums,
    StopOnSignal,
    check_models,
    check_output_dir,
    end_run,
    fill_deepspeed_config,
    flat_config,
    hold_output_dir,
    log_metrics,
    make_accelerator,
    make_optimizer,
    prepare_output_dir,
    raise_if_nonfinite,
    require,
    resume_state,
    save_model,
    to_device,
)

Callback = Callable[[dict], Any]


def train(config: TrainConfig, pairs=None, *, callbacks: list[Callback] = ()) -> dict:
    """Preference training with ``LOSSES[config.loss_type]``. ``pairs``: list of SafetyPair,
    or None to load ``config.dataset`` with ``config.view``. Returns the train summary.
    ``callbacks`` are called with each logged metrics dict (on every process)."""
    validate(config)  # a config built in code is checked as a resolved one is
    if config.loss_type == SAFERLHF:
        raise ConfigError("loss_type saferlhf is PPO-Lagrangian: run it with safedpo saferlhf "
                          "(safedpo.train.ppo_lagrangian.train), not safedpo train")
    pairs, stats = config_pairs(config) if pairs is None else (pairs, None)
    return run_objective(config, PreferenceObjective(config), list(pairs), stats, callbacks)


def config_pairs(config: TrainConfig) -> tuple[list, dict]:
    """The pairs of ``config.dataset`` in ``config.view``, with the load stats; a DataError that
    says why when the view keeps none."""
    require(config.dataset, "dataset")
    pairs, stats = load_pairs(
        config.dataset, view=config.view, split=config.dataset_split,
        config_name=config.dataset_config, column_map=config.column_map,
        skip_invalid=config.skip_invalid, keep_both_unsafe=config.keep_both_unsafe)
    require_pairs(pairs, stats)
    return pairs, stats


def sft(config: TrainConfig, examples=None, *, callbacks: list[Callback] = ()) -> dict:
    """Supervised fine-tuning (mean NLL of response tokens). ``examples``: list of
    (prompt, response), or None to load ``config.dataset``. Returns the train summary."""
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

        state = {"global_step": 0, "train_seconds": 0.0, "num_tokens": 0} if resume is None \
            else resume_state(accelerator, out, resume)
        if config.report_to:
            accelerator.init_trackers(out.name, config=flat_config(config.to_dict()))

        sums = MetricSums()
        bad_step = torch.tensor(-1, device=accelerator.device)  # first step with a non-finite loss
        last: dict = {}
        interrupted = False
        bar = tqdm(total=total_steps, initial=state["global_step"], desc=objective.name,
                   disable=config.disable_tqdm or not accelerator.is_main_process)
        session_tokens, t_loop = 0, time.time()
        model.train()
        with StopOnSignal() as stop:
            for step in range(state["global_step"], total_steps):
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
                    sums.add(stats)
                    bad_step = torch.where(~torch.isfinite(loss.detach()) & (bad_step < 0),
                                           step + 1, bad_step)
                    session_tokens += batch["num_tokens"] * nproc  # a python int: no sync
                lr = scheduler.get_last_lr()[0]  # the rate this step used
                scheduler.step()
                gs = state["global_step"] = step + 1
                bar.update(1)
                bar.set_postfix_str(
                    f"tok/s={session_tokens / max(time.time() - t_loop, 1e-9):.0f}"
                    + (f" loss={last['loss']:.4f}" if "loss" in last else ""), refresh=False)
                stopping = stop.requested(accelerator)
                if gs % config.logging_steps == 0 or gs == total_steps or stopping:
                    raise_if_nonfinite(bad_step, accelerator, out)
                    last = {"step": gs, "epoch": round(gs / steps_per_epoch, 4),
                            "learning_rate": lr,
                            "num_tokens": state["num_tokens"] + session_tokens,
                            **sums.reduce(accelerator)}
                    log_metrics(last, out, accelerator, config, callbacks)
                    stopping = stopping or stop.requested(accelerator)  # a callback may signal
                if stopping or (config.save_steps > 0 and gs % config.save_steps == 0
                                and gs < total_steps):
                    raise_if_nonfinite(bad_step, accelerator, out, model, optimizer, gs)
                    now = time.time()
                    saved = {**state, "train_seconds": state["train_seconds"] + now - t_train,
                             "num_tokens": state["num_tokens"] + session_tokens}
                    ckpt.save_checkpoint(accelerator, out, saved, config.save_total_limit)
                if stopping:
                    interrupted = True
                    break
        bar.close()
        raise_if_nonfinite(bad_step, accelerator, out, model, optimizer, state["global_step"])
        state["train_seconds"] += time.time() - t_train
        state["num_tokens"] += session_tokens
        if not interrupted:
            save_model(accelerator, model, tokenizer, out, config)
        summary = {"train_seconds": state["train_seconds"],
                   "total_seconds": time.time() - t_begin,
                   "global_step": state["global_step"], "max_steps": total_steps,
                   "num_tokens": state["num_tokens"], "interrupted": interrupted,
                   "final": last, "num_examples": len(items), "steps_per_epoch": steps_per_epoch,
                   "output_dir": str(out), "distributed": ran,
                   "model_dir": None if interrupted else str(out / "model"), "data": data_stats}
        if accelerator.is_main_process:
            (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        accelerator.wait_for_everyone()
        return summary
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


