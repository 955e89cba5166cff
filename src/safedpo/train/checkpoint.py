"""State on disk: training checkpoints (exact resume) and the reference log-prob cache.

Checkpoints are ``output_dir/checkpoints/step-N/``: ``accelerator.save_state`` (model as
safetensors, only its trainable tensors when some are frozen (LoRA), optimizer, registered
scheduler, every process's RNG; sharded states under DeepSpeed/FSDP) plus
``trainer_state.json`` (global step, seconds so far, and the size of every file saved). They
are written to a temporary dir and renamed, and deleted by renaming them away first, so a
crash never leaves a half-written or half-deleted ``step-N``; a listed checkpoint also has
every file its state names, at its size. Only finite states are saved, and resuming reads
tensors only (``weights_only=True``: a crafted file is refused, never run). The data
position needs no saving: batch k of epoch e is a pure function of (seed, e, k).

One run per output dir: the main process holds an ``flock`` on ``OUTPUT_DIR/.lock`` for the
whole run; the kernel drops it when the process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import re
import shutil
import socket
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

from safedpo.config import ConfigError
from safedpo.models.sources import resolve_model_source, run_model_dir

STATE_FILE = "trainer_state.json"
LOCK_FILE = ".lock"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_FILES = "files"  # trainer_state.json key: {relative path: size} of the checkpoint's files


def is_complete(path: Path) -> bool:
    """A checkpoint dir with its state file and every file that state names, at its size."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    files = state.get(_FILES, {}) if isinstance(state, dict) else None
    return isinstance(files, dict) and all(
        (path / name).is_file() and (path / name).stat().st_size == size
        for name, size in files.items())


def list_checkpoints(output_dir) -> list[Path]:
    """Complete ``checkpoints/step-N`` dirs of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and is_complete(p)]
    return [p for _, p in sorted(found)]


def remove(path: Path) -> None:
    """Delete a dir atomically as far as readers go: renamed to a hidden name first (one
    step), then removed; a crash in between leaves only the hidden dir (see clear_leftovers)."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(f".deleting-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clear_leftovers(output_dir) -> None:
    """Remove what a crashed run left half-written or half-deleted (hidden ``.tmp-*`` and
    ``.deleting-*`` dirs). Only safe while holding the run's lock."""
    out = Path(output_dir)
    for root in (out, out / "checkpoints"):
        if root.is_dir():
            for p in root.iterdir():
                if p.name.startswith((".tmp-", ".deleting-")):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()


def lock_output_dir(output_dir):
    """Take the run lock of ``output_dir`` (created if needed) -> the open lock file; closing
    it (or the process ending, even by kill -9) releases the lock. Raises ConfigError at
    once when another live process holds it."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigError(f"output_dir {out} is in use by a running run ({holder}); wait for "
                          "it to finish, stop it, or use another output_dir") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")  # for the message above
    f.flush()
    return f


def discard_checkpoints_after(output_dir, step: int) -> list[Path]:
    """Delete this run's checkpoints newer than ``step`` (resuming from an older one abandons
    them: they would otherwise be 'latest' and survive the keep-last-K rotation)."""
    later = [p for p in list_checkpoints(output_dir) if int(_STEP_DIR.match(p.name).group(1)) > step]
    for path in later:
        remove(path)
    return later


def find_checkpoint(output_dir, spec: str) -> Path:
    """``spec``: 'latest' (newest checkpoint of ``output_dir``) or a checkpoint dir."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"resume_from_checkpoint=latest but {Path(output_dir) / 'checkpoints'} has none")
        return found[-1]
    path = Path(spec)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"not a checkpoint (no {STATE_FILE}): {path}")
    if not is_complete(path):
        raise FileNotFoundError(f"incomplete checkpoint (files missing or cut short): {path}; "
                                "resume from another one (--resume_from_checkpoint latest)")
    return path


def _frozen_params(accelerator) -> bool:
    """Whether a prepared model has frozen parameters (LoRA: the base model)."""
    return any(not p.requires_grad for m in accelerator._models for p in m.parameters())


def _only_trainable(models, weights, _output_dir) -> None:
    """save_state pre-hook: keep only trainable tensors (a LoRA adapter, not a 7B base model:
    the frozen weights are reloaded from the base model on resume)."""
    for model, state in zip(models, weights):
        keep = {name for name, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k not in keep]:
            del state[key]


def save_checkpoint(accelerator, output_dir, state: dict, save_total_limit: int | None) -> Path:
    """Save everything needed to resume at ``state['global_step']``; keep the newest
    ``save_total_limit`` checkpoints. Called on every process (sharded states need it)."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{state['global_step']}"
    tmp = root / f".tmp-step-{state['global_step']}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    hook = accelerator.register_save_state_pre_hook(_only_trainable) \
        if _frozen_params(accelerator) else None
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    finally:
        if hook is not None:
            hook.remove()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*"))
                 if p.is_file()}
        (tmp / STATE_FILE).write_text(json.dumps({**state, _FILES: files}, indent=2))
        remove(final)
        os.replace(tmp, final)  # atomic: step-N is complete or absent
        if save_total_limit is not None and save_total_limit > 0:
            for old in list_checkpoints(output_dir)[:-save_total_limit]:
                remove(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path) -> dict:
    """Restore model, optimizer, registered objects and RNG from ``path``; -> trainer state.
    Optimizer and scheduler states load with ``weights_only=True`` (tensors and plain
    containers only): a file that needs arbitrary objects is refused, not executed."""
    # With frozen parameters the checkpoint holds only the trainable ones (see save_checkpoint).
    strict = {"strict": False} if _frozen_params(accelerator) else {}
    if accelerator.state.deepspeed_plugin is not None:
        check_pickles(path)  # DeepSpeed loads its own files, without weights_only
    try:
        accelerator.load_state(str(path), load_kwargs={"weights_only": True}, **strict)
    except pickle.UnpicklingError as e:
        why = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not|\.|\n|$)", str(e))
        raise ConfigError(f"checkpoint {path} holds a file that is not plain tensors, refused "
                          f"({why.group(1) if why else 'unreadable'}); resume from a checkpoint "
                          "you trust") from None
    state = json.loads((Path(path) / STATE_FILE).read_text())
    state.pop(_FILES, None)
    return state


# What DeepSpeed's ZeRO checkpoints hold besides tensors and plain containers.
DEEPSPEED_GLOBALS = frozenset({"deepspeed.runtime.zero.config.ZeroStageEnum",
                               "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                               "deepspeed.utils.tensor_fragment.fragment_address"})


def check_pickles(path, allowed=DEEPSPEED_GLOBALS) -> None:
    """ConfigError unless every ``*.pt`` file under ``path`` names only the globals that
    ``weights_only=True`` allows, plus ``allowed``. The files are scanned, not unpickled, so a
    crafted file's payload never runs; DeepSpeed then loads files that can hold nothing else."""
    for f in sorted(Path(path).rglob("*.pt")):
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(f)) - allowed
        if unsafe:
            raise ConfigError(f"checkpoint {path}: {f.name} names {', '.join(sorted(unsafe))}, "
                              "which a checkpoint never needs; refused. Resume from a "
                              "checkpoint you trust")


def state_is_finite(accelerator, model, optimizer) -> bool:
    """Whether every weight and optimizer-state tensor is finite, on every process (a
    collective: call it on all of them). The loss of step k is computed before step k's
    update, so a finite loss does not prove the weights it produced are finite."""
    tensors = [p.detach() for p in model.parameters()]
    tensors += [v for s in optimizer.state.values() for v in s.values()
                if torch.is_tensor(v) and v.is_floating_point()]
    # FSDP2 shards are DTensors: each process checks its own shard, the reduce sees them all.
    tensors = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    bad = torch.stack([~torch.isfinite(t).all() for t in tensors]).any() if tensors \
        else torch.tensor(False)
    return not bool(accelerator.reduce(bad.float().to(accelerator.device), "max"))


# --- reference log-prob cache --------------------------------------------------------------

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model")
_SAMPLE = 1 << 16


def _file_digest(path: Path) -> str:
    """Content hash of a file: all of it when small, else evenly spaced 64 KiB samples
    (a fine-tuned model changes nearly every tensor, so samples see any real change)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 64 * _SAMPLE:
            h.update(f.read())
        else:
            for i in range(64):
                f.seek((size - _SAMPLE) * i // 63)
                h.update(f.read(_SAMPLE))
    return h.hexdigest()


def weights_fingerprint(name_or_path: str, gguf_file: str | None = None) -> str:
    """Identity of a model's weights: its path plus a hash of its weight/config files
    (for a hub id, the files of its cached snapshot)."""
    name_or_path, gguf_file = resolve_model_source(str(name_or_path), gguf_file)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = run_model_dir(path)
    if not path.exists():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name_or_path, local_files_only=True))
        except Exception:  # not cached: the id is all we know
            return hashlib.sha256(f"{name_or_path}|{gguf_file}".encode()).hexdigest()
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
        and not p.name.startswith("tokenizer"))
    if gguf_file and path.is_dir():
        files = [path / gguf_file]
    h = hashlib.sha256(f"{path.resolve()}|{gguf_file}".encode())
    for f in files:
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{_file_digest(f)}".encode())
    return h.hexdigest()


def data_fingerprint(items: list[dict]) -> str:
    """Hash of tokenized pairs (ids and masks): covers data, template and truncation."""
    h = hashlib.sha256()
    for item in items:
        for key in ("chosen_input_ids", "chosen_loss_mask", "rejected_input_ids",
                    "rejected_loss_mask"):
            h.update(item[key].numpy().tobytes())
            h.update(b"|")
    return h.hexdigest()


def ref_cache_path(cache_dir, key: dict) -> Path:
    """File for a cache key (a dict of everything the reference log-probs depend on)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"ref_logps-{digest}.safetensors"


def load_ref_cache(path: Path) -> dict[str, torch.Tensor] | None:
    """{chosen_sum, chosen_count, rejected_sum, rejected_count}, each (N,), or None."""
    if not path.exists():
        return None
    return load_file(str(path))


def save_ref_cache(path: Path, tensors: dict[str, torch.Tensor], key: dict) -> None:
    """Atomic write; the key is stored as metadata (readable with safetensors tools)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"key": json.dumps(key, sort_keys=True)})
    os.replace(tmp, path)
