"""State on disk: training checkpoints (exact resume) and the reference log-prob cache.

Checkpoints are ``output_dir/checkpoints/step-N/``: ``accelerator.save_state`` (model as
safetensors, only its trainable tensors when some are frozen (LoRA), optimizer, registered
scheduler, every process's RNG; sharded states under DeepSpeed/FSDP) plus
``trainer_state.json`` (global step, seconds so far). They are written to a temporary dir and
renamed, so a crash never leaves a half-written ``step-N``. The data
position needs no saving: batch k of epoch e is a pure function of (seed, e, k).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from safedpo.model_sources import resolve_model_source
from safedpo.modeling import run_model_dir

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def list_checkpoints(output_dir) -> list[Path]:
    """``checkpoints/step-N`` dirs of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def discard_checkpoints_after(output_dir, step: int) -> list[Path]:
    """Delete this run's checkpoints newer than ``step`` (resuming from an older one abandons
    them: they would otherwise be 'latest' and survive the keep-last-K rotation)."""
    later = [p for p in list_checkpoints(output_dir) if int(_STEP_DIR.match(p.name).group(1)) > step]
    for path in later:
        shutil.rmtree(path, ignore_errors=True)
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
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # atomic: step-N is complete or absent
        if save_total_limit is not None and save_total_limit > 0:
            for old in list_checkpoints(output_dir)[:-save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path) -> dict:
    """Restore model, optimizer, registered objects and RNG from ``path``; -> trainer state."""
    # With frozen parameters the checkpoint holds only the trainable ones (see save_checkpoint).
    strict = {"strict": False} if _frozen_params(accelerator) else {}
    accelerator.load_state(str(path), load_kwargs={"weights_only": False}, **strict)
    return json.loads((Path(path) / STATE_FILE).read_text())


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
