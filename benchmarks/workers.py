"""One training run per process: TRL's DPOTrainer or our trainer on the prepared workload.

Both sides get the same weights, token ids, batch order (our trainer's seeded order; TRL
gets the pairs already in that order and a sequential sampler), AdamW, learning-rate
schedule, clipping, beta and max length; with a LoRA workload the same peft adapter (rank,
alpha, dropout 0, all linear layers but lm_head; both seed before creating it, so its initial
weights agree too: the loss check would catch it if they did not), the reference being the
adapter disabled on both sides. A global optimizer post-step hook
timestamps the end of every optimizer step on both sides alike, so tokens/s is measured the
same way without touching either trainer.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from workload import Workload, load_pairs


@dataclass(frozen=True)
class Arm:
    """One benchmarked configuration."""

    tool: str  # "trl" | "ours"
    label: str
    precompute_ref_log_probs: bool = False
    loss_type: str = "dpo"  # ours only ("dpo" | "safedpo"); TRL always runs sigmoid (= DPO)
    bf16: bool = False  # ours only: bf16 autocast (CUDA, or a CPU with native bf16)
    trim_heap: bool = False  # ours only: free heap pages back to the OS after every step
    # glibc's small-block caches off (safedpo.heap.TUNABLES) in the worker's environment.
    # None: as each tool runs for its users (the safedpo command turns them off; TRL does not).
    heap_tuning: bool | None = None
    # TRL only: DPOConfig fields that differ from TRL's defaults (empty = TRL's defaults).
    trl_overrides: dict = field(default_factory=dict)

    @property
    def heap_tuned(self) -> bool:
        return self.tool == "ours" if self.heap_tuning is None else self.heap_tuning


# TRL with the settings our trainer uses: no gradient checkpointing, fp32, plain AdamW.
_TRL_SAME = {"gradient_checkpointing": False, "bf16": False, "optim": "adamw_torch"}

ARMS: dict[str, Arm] = {
    "trl_default": Arm("trl", "TRL DPOTrainer, TRL defaults (grad. checkpointing, bf16 "
                              "autocast, fused AdamW)"),
    "trl_same": Arm("trl", "TRL DPOTrainer, same settings as ours (no checkpointing, fp32, AdamW)",
                    trl_overrides=_TRL_SAME),
    "trl_same_heap": Arm("trl", "TRL DPOTrainer, same settings, with our heap tunables "
                                "(glibc small-block caches off)", trl_overrides=_TRL_SAME,
                         heap_tuning=True),
    "ours_dpo": Arm("ours", "safedpo, DPO", loss_type="dpo"),
    "ours_dpo_glibc": Arm("ours", "safedpo, DPO, glibc's default heap (SAFEDPO_HEAP_TUNING=0)",
                          loss_type="dpo", heap_tuning=False),
    "ours_dpo_bf16": Arm("ours", "safedpo, DPO, bf16 autocast (as TRL's defaults)",
                         loss_type="dpo", bf16=True),
    "ours_dpo_trim": Arm("ours", "safedpo, DPO, trim_heap (free heap pages returned after "
                                 "every step)", loss_type="dpo", trim_heap=True),
    "ours_safedpo": Arm("ours", "safedpo, SafeDPO (Delta=10)", loss_type="safedpo"),
    "trl_same_pre": Arm("trl", "TRL DPOTrainer, same settings, precomputed ref log-probs",
                        precompute_ref_log_probs=True, trl_overrides=_TRL_SAME),
    "ours_dpo_pre": Arm("ours", "safedpo, DPO, precomputed ref log-probs (on-disk cache)",
                        precompute_ref_log_probs=True),
}


# The prompt is used verbatim on our side, as TRL receives it (no template, no BOS).
PROMPT_TEMPLATE = "{prompt}"


def _ids_digest(rows) -> str:
    """sha256 over every example's (prompt_ids, chosen_ids, rejected_ids), in order."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row).encode())
    return h.hexdigest()


def run_trl(arm: Arm, workload: Workload, workdir: Path, run_dir: Path) -> dict:
    """TRL's DPOTrainer. Returns {"losses": [...], "ids_digest": str}."""
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class SequentialDPOTrainer(DPOTrainer):
        # Same batch order as ours: the dataset order (TRL would shuffle with its own RNG).
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    losses: list[float] = []

    class LossLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    pairs = _pairs(workdir)
    pairs = [pairs[i] for i in json.loads((workdir / "order.json").read_text())]
    dataset = Dataset.from_list(
        [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    )
    model_dir = str(workdir / "model")
    args = DPOConfig(
        **workload.trainer_args(run_dir, arm.precompute_ref_log_probs),
        warmup_steps=0,
        loss_type="sigmoid",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        **arm.trl_overrides,
    )
    peft_config = None
    if workload.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=workload.lora_r, lora_alpha=workload.lora_alpha,
                                 lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = SequentialDPOTrainer(
        model=model_dir,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=[LossLog()],
        peft_config=peft_config,
    )
    train = trainer.train_dataset
    digest = _ids_digest(zip(train["prompt_ids"], train["chosen_ids"], train["rejected_ids"]))
    trainer.train()
    return {"losses": losses, "ids_digest": digest, "bf16_requested": bool(args.bf16),
            "mixed_precision": str(trainer.accelerator.mixed_precision)}


def _pairs(workdir: Path) -> list[dict]:
    """The pairs as both trainers get them: responses start with a space. TRL tokenizes
    prompt + response as ONE string, we tokenize the response alone; with the space the word
    boundary is the same either way (a BPE tokenizer such as SmolLM2's marks it in the
    response's first token), so the ids are exactly equal (checked through ids_digest)."""
    pairs = load_pairs(workdir / "pairs.jsonl")
    for p in pairs:
        p["chosen"], p["rejected"] = " " + p["chosen"], " " + p["rejected"]
    return pairs


def _ours_pairs(workdir: Path):
    from safedpo.data.types import SafetyPair

    return [
        SafetyPair(p["prompt"], p["chosen"], p["rejected"], p["chosen_unsafe"],
                   p["rejected_unsafe"], {})
        for p in _pairs(workdir)
    ]


def ours_order(workload: Workload) -> list[int]:
    """Pair indices in the order our trainer visits them, step after step (max_steps *
    batch_size). Our trainer shuffles with its own seeded permutation and has no switch to
    turn that off, so TRL (sequential sampler) is given the pairs in this order. Uses the
    engine's public ``batch_indices``; if that drifts, the loss check fails loudly."""
    from safedpo.train.loop import batch_indices

    n, b = workload.n_pairs, workload.batch_size
    steps_per_epoch = -(-n // b)
    return [i for step in range(workload.max_steps)
            for i in batch_indices(n, step, steps_per_epoch, b, workload.seed)]


def ours_tokens(workdir: Path, workload: Workload, order: list[int]) -> tuple[str, list[int]]:
    """The tokenization our trainer uses: (the same digest as TRL's ``ids_digest`` over the
    pairs in ``order``, non-pad prompt + chosen + rejected tokens of every pair (n_pairs,))."""
    from transformers import AutoTokenizer

    from safedpo.data.tokenization import tokenize_pairs

    encoded = tokenize_pairs(
        AutoTokenizer.from_pretrained(workdir / "model"), _ours_pairs(workdir),
        prompt_template=PROMPT_TEMPLATE, max_length=workload.max_length,
        max_prompt_length=workload.prompt_tokens,
    )
    rows = []
    for e in encoded:
        ids, mask = e["chosen_input_ids"], e["chosen_loss_mask"]
        rejected = e["rejected_input_ids"][e["rejected_loss_mask"]]
        rows.append([ids[~mask].tolist(), ids[mask].tolist(), rejected.tolist()])
    return _ids_digest(rows[i] for i in order), [sum(map(len, row)) for row in rows]


def run_ours(arm: Arm, workload: Workload, workdir: Path, run_dir: Path) -> dict:
    """Our trainer (safedpo.train.loop.train). Returns {"losses": [...]} from metrics.jsonl."""
    from safedpo.config import TrainConfig
    from safedpo.train.loop import train

    config = TrainConfig(
        **workload.trainer_args(run_dir, arm.precompute_ref_log_probs),
        model_name_or_path=str(workdir / "model"),
        loss_type=arm.loss_type,
        delta=workload.delta,
        optim="adamw_torch",
        warmup_ratio=0.0,
        max_prompt_length=workload.prompt_tokens,
        prompt_template=PROMPT_TEMPLATE,
        gradient_checkpointing=False,
        bf16=arm.bf16,
        trim_heap=arm.trim_heap,
        # LoRA workload: target modules None = all linear layers but lm_head (TRL: "all-linear")
        **(dict(use_peft=True, lora_r=workload.lora_r, lora_alpha=workload.lora_alpha,
                lora_dropout=0.0, lora_target_modules=None) if workload.lora_r else {}),
        # Shared by every run of the benchmark: the first run fills it, later ones reuse it.
        ref_cache_dir=str(workdir / "ref_cache"),
        save_steps=0,
        report_to=[],
    )
    cache = workdir / "ref_cache"

    def cache_files() -> int:
        return sum(1 for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0

    before = cache_files()
    seen: dict = {}

    def record_precision(metrics: dict) -> None:  # called while accelerate's state is live
        if not seen:
            from accelerate.state import AcceleratorState

            seen["mixed_precision"] = str(AcceleratorState().mixed_precision)

    train(config, _ours_pairs(workdir), callbacks=[record_precision])
    with (run_dir / "metrics.jsonl").open() as f:
        losses = [float(r["loss"]) for r in map(json.loads, f) if "loss" in r]
    out = {"losses": losses, "bf16_requested": arm.bf16, **seen}
    if arm.precompute_ref_log_probs:
        # A hit reads an earlier run's cache and writes nothing new.
        out["ref_cache_hit"] = before > 0 and cache_files() == before
    return out


RUNNERS = {"trl": run_trl, "ours": run_ours}

_SHORT = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}


def watch_precision() -> dict:
    """Fills the returned dict from the first Linear layer run with gradients (a training
    forward, either trainer): its output dtype ("precision": bf16 / fp16 / fp32, what the
    matmuls really computed in) and whether autocast was on. Then the hook removes itself, so
    it costs nothing after the first step."""
    import torch

    seen: dict = {}

    def hook(module, args, output) -> None:
        if (isinstance(module, torch.nn.Linear) and module.weight.requires_grad
                and torch.is_grad_enabled() and isinstance(output, torch.Tensor)):
            seen.update(precision=_SHORT.get(str(output.dtype), str(output.dtype)),
                        autocast=torch.is_autocast_enabled(output.device.type))
            handle.remove()

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    return seen


def worker_main(arm_name: str, workdir: Path, run_dir: Path, result_path: Path,
                threads: int) -> None:
    """Run one arm in this process and write its result JSON: losses, step end times
    (time.monotonic) and CPU times, peak RSS, the precision the training forward really used
    (and what was asked for: bf16_requested, accelerate's mixed_precision)."""
    started = time.monotonic()
    import torch

    from safedpo.heap import heap_tuned

    torch.set_num_threads(threads)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    step_ends: list[float] = []
    step_cpu: list[float] = []  # process CPU seconds (all threads) at each step end

    def stamp(optimizer, args, kwargs) -> None:
        step_ends.append(time.monotonic())
        step_cpu.append(time.process_time())

    register_optimizer_step_post_hook(stamp)
    precision = watch_precision()

    arm = ARMS[arm_name]
    workload = Workload.from_json((workdir / "workload.json").read_text())
    out = RUNNERS[arm.tool](arm, workload, workdir, run_dir)
    finished = time.monotonic()

    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    out.update(
        arm=arm_name,
        tool=arm.tool,
        pid=os.getpid(),
        started=started,
        finished=finished,
        step_ends=step_ends,
        step_cpu=step_cpu,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        torch_threads=torch.get_num_threads(),
        heap_tuned=heap_tuned(),
        precision=precision.get("precision", "unknown"),
        autocast=precision.get("autocast"),
    )
    result_path.write_text(json.dumps(out))
