"""What a training run needs around the loop: the accelerator and its precision, the DeepSpeed
fill-in, the policy, the optimizer and schedule, the run dir, metric sums, logging, saving
and signal handling. ``safedpo.train.loop`` composes these; nothing here knows the objective."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import math
import os
import shutil
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import broadcast_object_list
from transformers import PreTrainedModel, get_scheduler

from safedpo.config import ConfigError, TrainConfig, read_yaml, resume_changes, save_config
from safedpo.logprobs import accepts_logits_to_keep
from safedpo.models.loading import apply_lora, drop_gguf_marker, load_model_and_tokenizer
from safedpo.models.sources import check_model
from safedpo.train import checkpoint as ckpt
from safedpo.train import distributed


def require(value, name: str) -> None:
    """A ConfigError when a needed field is unset."""
    if value in (None, ""):
        raise ConfigError(f"'{name}' is not set (config file or --{name})")


def check_models(config: TrainConfig) -> None:
    """The policy and reference sources exist and hold a model (before the run dir is
    touched: an --overwrite_output_dir run with a wrong path must not delete the last run)."""
    require(config.model_name_or_path, "model_name_or_path")
    for field in ("model_name_or_path", "ref_model_name_or_path"):
        name = getattr(config, field)
        if name:
            try:
                check_model(name, config.gguf_file if name == config.model_name_or_path
                            else None)
            except ValueError as e:  # a malformed source, e.g. pkg://a.b/x
                raise ConfigError(f"{field}: {e}") from None


def load_policy(config: TrainConfig):
    """-> (model, tokenizer, whether the model takes ``logits_to_keep``)."""
    model, tokenizer = load_model_and_tokenizer(
        config.model_name_or_path, trust_remote_code=config.trust_remote_code,
        gguf_file=config.gguf_file, dtype=config.dtype)
    keep_logits = accepts_logits_to_keep(model)
    if config.disable_dropout:
        disable_dropout(model)
    if config.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and DDP without extra hooks.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    if config.use_peft:
        model = apply_lora(model, r=config.lora_r, alpha=config.lora_alpha,
                           dropout=config.lora_dropout, target_modules=config.lora_target_modules)
    return model, tokenizer, keep_logits


def disable_dropout(model):
    """Dropout modules and the float rates attention layers apply functionally (Llama's
    ``attention_dropout``) to 0. The saved config is left as it was."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(m, name, None), float):
                setattr(m, name, 0.0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` (None where the C library has none: macOS, musl, Windows)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim(0)``; elsewhere nothing).

    A step allocates and frees many activation tensors of 0.1-4 MiB; glibc keeps those in its
    heap (it raises its mmap threshold after large frees), where freed blocks of one size do not
    fit the next step's, so the resident set grows with fragmentation rather than with live
    tensors. Trimming after every optimizer step returns the free pages (SmolLM2 + LoRA:
    peak RSS and tokens/s against TRL in docs/performance.md, the trim's time included)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_supports_bf16()


def make_accelerator(config: TrainConfig):
    mixed = None  # None: whatever `accelerate launch` / its config says
    if config.bf16:
        if bf16_supported():  # CUDA with bf16, or a CPU with native bf16 (torch CPU autocast)
            mixed = "bf16"
        else:
            warnings.warn("bf16 requested but this device has no bf16 support here; "
                          "training in float32", stacklevel=3)
            mixed = "no"
    trackers = [t for t in config.report_to if t != "none"]
    request = distributed.requested()
    accelerator = Accelerator(mixed_precision=mixed,
                              gradient_accumulation_steps=config.gradient_accumulation_steps,
                              step_scheduler_with_optimizer=False,  # once per optimizer step
                              log_with=trackers or None, project_dir=config.output_dir,
                              **distributed.accelerator_kwargs(request))
    distributed.check(accelerator, request)  # DeepSpeed/FSDP as asked, or stop
    return accelerator


def fill_deepspeed_config(ds_config: dict, config: TrainConfig) -> dict:
    """Fill a DeepSpeed config's ``"auto"`` batch and clipping values from our config.

    accelerate fills them from a DataLoader, and we pass none (batches are built by the loop):
    without this, ``prepare`` refuses to start. DeepSpeed clips gradients itself, so
    ``gradient_clipping`` must be ``max_grad_norm``; an explicit value that differs from ours
    is an error rather than a silently different run. ``ds_config`` is changed in place and returned."""
    ours = {"train_micro_batch_size_per_gpu": ("per_device_train_batch_size",
                                               config.per_device_train_batch_size),
            "gradient_clipping": ("max_grad_norm", float(config.max_grad_norm or 0.0))}
    for key, (field, value) in ours.items():  # DeepSpeed clipping 0 = off
        given = ds_config.get(key, "auto")
        if given == "auto":
            ds_config[key] = value
        elif float(given) != value:
            raise ValueError(
                f"the DeepSpeed config has {key} = {given} but {field} is "
                f"{getattr(config, field)}: set {key} to 'auto' (or to the same value) in the "
                f"accelerate/DeepSpeed config")
    return ds_config


def end_run(accelerator):
    """Close the trackers and reset accelerate's shared state, so that a later run in this
    process picks its own precision, accumulation and distributed type (AcceleratorState
    wrote FSDP into the shared PartialState, and an Accelerator built on that skips its FSDP
    set-up). Not ``end_training()``: it also closes the process group, which later runs in
    these processes (a sweep or comparison under ``accelerate launch``) still need."""
    for tracker in accelerator.trackers:
        tracker.finish()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


RUN_FILES = ("model", "checkpoints", "metrics.jsonl", "train_summary.json")


def hold_output_dir(config: TrainConfig, accelerator):
    """The run lock of output_dir (the main process holds it; None elsewhere): close it at the
    end. Another run holding it is an error on every process; what a crashed run left
    half-written is removed."""
    lock, busy = None, None
    if accelerator.is_main_process:
        try:
            lock = ckpt.lock_output_dir(config.output_dir)
            ckpt.clear_leftovers(config.output_dir)
        except ConfigError as e:
            busy = str(e)
    busy = broadcast_object_list([busy])[0]  # every process stops, not only the main one
    if busy:
        raise ConfigError(busy)
    return lock


def check_output_dir(config: TrainConfig) -> Path | None:
    """-> the checkpoint to resume, or None. Refuses to replace a previous run unless asked
    and to resume with settings that change what the run computes; deletes nothing
    (``prepare_output_dir`` does, once the run can start). A run that stopped before its
    first checkpoint (only metrics.jsonl) has nothing to continue: it runs again. Checked
    before anything loads, and again under the run lock (``hold_output_dir``)."""
    out = Path(config.output_dir)
    resume = checked_resume(config, out)
    previous = [n for n in RUN_FILES if (out / n).exists()]
    if previous and previous != ["metrics.jsonl"] and resume is None \
            and not config.overwrite_output_dir:
        raise ConfigError(
            f"output_dir {out} already holds a run ({', '.join(previous)}). Use another "
            "output_dir, --resume_from_checkpoint latest to continue it, or "
            "--overwrite_output_dir true to replace it")
    return resume


def prepare_output_dir(config: TrainConfig, accelerator, resume: Path | None) -> Path:
    """The run dir, with the previous run's files removed (unless resuming) and config.yaml
    written. Called once the model and data have loaded, so that a run that cannot start
    leaves the previous one whole."""
    out = Path(config.output_dir)
    if accelerator.is_main_process:
        if resume is None:
            if [n for n in RUN_FILES if (out / n).exists()] == ["metrics.jsonl"] \
                    and not config.overwrite_output_dir:
                warnings.warn(f"{out} holds a run that stopped before its first checkpoint; "
                              "starting it again", stacklevel=3)
            for name in RUN_FILES:
                p = out / name
                if p.is_dir():
                    ckpt.remove(p)
                elif p.exists():
                    p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    accelerator.wait_for_everyone()
    return out


def checked_resume(config: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume, after checking that this config computes the same run as
    the one that wrote it (its run dir's config.yaml); None when not resuming."""
    if not config.resume_from_checkpoint:
        return None
    try:
        resume = ckpt.find_checkpoint(out, config.resume_from_checkpoint)
    except FileNotFoundError as e:
        if config.resume_from_checkpoint == "latest" and (out / "metrics.jsonl").exists() \
                and not (out / "model").exists():
            raise FileNotFoundError(f"{e}: the run stopped before its first checkpoint; run "
                                    "it again without --resume_from_checkpoint") from None
        raise
    saved = resume.parent.parent / "config.yaml"
    old = read_yaml(saved) if saved.is_file() else None
    changed = resume_changes(old, config) if old else {}
    if changed:
        diff = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(f"resume_from_checkpoint: {diff} differ from the run being resumed "
                          f"({saved}); resume with its settings, or start a new run in "
                          "another output_dir")
    return resume


def resume_state(accelerator, out: Path, checkpoint: Path) -> dict:
    """Load ``checkpoint`` (weights, optimizer, scheduler, RNG) -> the loop state it saved.
    Metrics logged after it are dropped (they will be logged again), and so are later
    checkpoints of the abandoned continuation."""
    state = {"num_tokens": 0, **ckpt.load_checkpoint(accelerator, checkpoint)}
    truncate_metrics(out / "metrics.jsonl", state["global_step"], accelerator)
    dropped = ckpt.discard_checkpoints_after(out, state["global_step"]) \
        if accelerator.is_main_process else []
    if dropped:
        warnings.warn(f"resumed at step {state['global_step']}: removed the later "
                      f"checkpoint(s) {', '.join(p.name for p in dropped)} of the "
                      f"abandoned continuation in {out / 'checkpoints'}", stacklevel=3)
    accelerator.wait_for_everyone()
    return state


def make_optimizer(model, config: TrainConfig, total_steps: int):
    """AdamW or SGD with momentum (no weight decay on biases and norm weights, the 1-d
    parameters) and the learning-rate schedule with linear warmup."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if config.optim == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.learning_rate,
                                      betas=(config.adam_beta1, config.adam_beta2))
    schedule = config.lr_scheduler_type
    if schedule == "constant" and config.warmup_ratio > 0:
        schedule = "constant_with_warmup"  # HF's "constant" ignores the warmup
    scheduler = get_scheduler(schedule, optimizer,
                              num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


def to_device(batch: dict, device) -> dict:
    """Tensors to ``device``; pinned first on CUDA so the copy does not block the host."""
    pin = torch.device(device).type == "cuda"
    return {k: (v.pin_memory() if pin else v).to(device, non_blocking=True)
            if torch.is_tensor(v) else v for k, v in batch.items()}


class MetricSums:
    """Per-metric sums (device tensors) and counts (python numbers or device tensors), so
    nothing waits for the device until they are reduced across processes at a logging step."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, Any] = {}

    def add(self, stats: dict):
        for name, (total, count) in stats.items():
            self.sums[name] = self.sums.get(name, 0) + total.detach().float()
            self.counts[name] = self.counts.get(name, 0) + count

    def reduce(self, accelerator) -> dict[str, float]:
        names = sorted(self.sums)
        if not names:
            return {}
        dev = accelerator.device
        table = torch.stack([torch.stack([self.sums[n].to(dev), torch.as_tensor(
            self.counts[n], dtype=torch.float32, device=dev)]) for n in names])
        values = accelerator.reduce(table, "sum").tolist()
        self.sums.clear()
        self.counts.clear()
        return {n: s / c for n, (s, c) in zip(names, values) if c > 0}


def raise_if_nonfinite(bad_step: torch.Tensor, accelerator, out: Path, model=None,
                       optimizer=None, step: int = 0):
    """Stop on a non-finite loss so far or, when given the model and optimizer (before
    anything is saved), on non-finite weights or optimizer state after ``step``. Every saved
    checkpoint passed this check, so the newest one is the last good one."""
    first = int(accelerator.reduce(bad_step.clone(), "max"))
    what = f"non-finite loss at step {first}" if first >= 0 else None
    if what is None and model is not None \
            and not ckpt.state_is_finite(accelerator, model, optimizer):
        what = f"non-finite weights or optimizer state after step {step}"
    if what is not None:
        found = ckpt.list_checkpoints(out)
        keep = f"last good checkpoint: {found[-1]}" if found else "no checkpoint was saved"
        raise FloatingPointError(f"{what}; training stopped ({keep}). "
                                 "Try a lower learning_rate, max_grad_norm, or bf16=false")


def log_metrics(metrics: dict, out: Path, accelerator, config: TrainConfig, callbacks):
    if accelerator.is_main_process:
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
    if config.report_to:
        accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])
    for callback in callbacks:
        callback(metrics)


def truncate_metrics(path: Path, step: int, accelerator):
    """On resume, drop metrics logged after the checkpoint (they will be logged again)."""
    if accelerator.is_main_process and path.exists():
        lines = [ln for ln in path.read_text().splitlines()
                 if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def save_model(accelerator, model, tokenizer, out: Path, config: TrainConfig):
    """model/ = final weights (or LoRA adapter) + tokenizer, written to a temp dir first."""
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if config.gradient_checkpointing:
            unwrapped.config.use_cache = True
        if isinstance(unwrapped, PreTrainedModel):  # not a peft model: it saves its adapter
            drop_gguf_marker(unwrapped)  # full fine-tuning from a GGUF file: plain weights
        tmp, final = out / ".tmp-model", out / "model"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        ckpt.remove(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()


def flat_config(d: dict) -> dict:
    """Tracker-friendly config: scalars only."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in d.items()}


class StopOnSignal:
    """SIGINT/SIGTERM set a flag; the loop checkpoints and returns at the end of the step.
    A second signal interrupts at once."""

    def __init__(self):
        self.signum = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, accelerator) -> bool:
        flag = self.signum is not None
        if accelerator.num_processes > 1:  # all processes must stop at the same step
            t = torch.tensor(float(flag), device=accelerator.device)
            flag = bool(accelerator.reduce(t, "max"))
        return flag

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
