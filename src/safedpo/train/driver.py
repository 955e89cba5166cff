"""The step driver: what every optimizer-step loop does around its step, written once.

Both engines' loops (``loop.run_objective`` for preference losses, SFT and score models;
``ppo_lagrangian`` for Safe RLHF) compute their own step and hand the rest to it:

    with StepDriver(config, accelerator, out, resume, name, total_steps, steps_per_epoch,
                    initial, callbacks, t_start) as driver:
        for step in driver.steps():
            ... one optimizer step ...
            driver.record(stats, loss, step)          # metric sums, the finite check
            if driver.end_step(step, head, model, optimizer):
                break                                  # SIGINT/SIGTERM: checkpointed
    state = driver.finish(model, optimizer)
    driver.write_summary(summary)

- resume: the state saved with the checkpoint (weights, optimizer, scheduler, RNG are loaded
  into the prepared objects), else ``initial``; metrics logged after it are dropped;
- trackers (``report_to``), the progress bar;
- metric sums: device tensors summed per step, reduced across processes only at a logging
  step (the only host syncs);
- the finite checks: a non-finite loss stops the run at the next logging step; weights and
  optimizer state are checked before every checkpoint (the newest one is the last good one);
- signals: SIGINT/SIGTERM end the run at the end of the step with a checkpoint;
- the cadence: metrics every ``logging_steps`` (and at the last step), a checkpoint every
  ``save_steps`` (not at the last step: the final model is saved instead);
- the summary: the fields every engine reports, written once by the main process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from safedpo.config import TrainConfig
from safedpo.heap import heap_tuned
from safedpo.train import checkpoint as ckpt
from safedpo.train.runtime import (
    MetricSums,
    StopOnSignal,
    flat_config,
    log_metrics,
    raise_if_nonfinite,
    resume_state,
    trim_heap,
)


class StepDriver:
    def __init__(self, config: TrainConfig, accelerator, out: Path, resume: Path | None, *,
                 name: str, total_steps: int, steps_per_epoch: int, initial: dict,
                 callbacks=(), t_start: float | None = None,
                 postfix: Callable[[dict], str] | None = None,
                 extra_state: Callable[[], dict] | None = None):
        """``initial``: the loop state of a new run (``global_step``, ``train_seconds``,
        ``num_tokens`` and the engine's own keys); a resumed run gets the checkpoint's.
        ``t_start``: when the training time started to count (default: now). ``postfix``:
        the progress bar's text from the last logged metrics. ``extra_state``: more state to
        save with every checkpoint (an objective's own, e.g. adaptive margins), read when a
        checkpoint is saved; a resumed run finds it in ``state``."""
        self.config, self.accelerator, self.out = config, accelerator, out
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.callbacks, self.postfix = list(callbacks), postfix
        self.extra_state = extra_state
        self.t_start = time.time() if t_start is None else t_start
        self.state = dict(initial) if resume is None else resume_state(accelerator, out, resume)
        if config.report_to:
            accelerator.init_trackers(out.name, config=flat_config(config.to_dict()))
        self.sums = MetricSums()
        self.bad_step = torch.tensor(-1, device=accelerator.device)  # first non-finite loss
        self.last: dict = {}
        self.interrupted = False
        self.session_tokens, self.t_loop = 0, time.time()
        self.bar = tqdm(total=total_steps, initial=self.state["global_step"], desc=name,
                        disable=config.disable_tqdm or not accelerator.is_main_process)
        self.stop = StopOnSignal()

    def __enter__(self) -> "StepDriver":
        self.stop.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.__exit__(*exc)

    def steps(self) -> range:
        return range(self.state["global_step"], self.total_steps)

    @property
    def num_tokens(self) -> int:
        """Tokens trained on so far (all processes, resumed runs included)."""
        return self.state["num_tokens"] + self.session_tokens

    def record(self, stats: dict, loss: torch.Tensor, step: int, tokens: int = 0) -> None:
        """One micro-batch's (or step's) metric sums ``{name: (sum, count)}``, its loss for the
        finite check, and the tokens it trained on (a python int: no device sync)."""
        self.sums.add(stats)
        self.bad_step = torch.where(~torch.isfinite(loss.detach()) & (self.bad_step < 0),
                                    step + 1, self.bad_step)
        self.session_tokens += tokens

    def end_step(self, step: int, head: dict, model, optimizer) -> bool:
        """After optimizer step ``step``: progress; at a logging step the metrics
        ``{"step", "epoch", **head, **the reduced sums}``; at a save step, or when a signal
        came, a checkpoint. -> True when the loop must stop (a signal: checkpoint saved)."""
        acc, config = self.accelerator, self.config
        gs = self.state["global_step"] = step + 1
        if config.trim_heap:
            trim_heap()
        self.bar.update(1)
        stopping = self.stop.requested(acc)
        if gs % config.logging_steps == 0 or gs == self.total_steps or stopping:
            raise_if_nonfinite(self.bad_step, acc, self.out)
            self.last = {"step": gs, "epoch": round(gs / self.steps_per_epoch, 4), **head,
                         **self.sums.reduce(acc)}
            log_metrics(self.last, self.out, acc, config, self.callbacks)
            stopping = stopping or self.stop.requested(acc)  # a callback may signal
        if self.postfix is not None:
            self.bar.set_postfix_str(self.postfix(self.last), refresh=False)
        if stopping or (config.save_steps > 0 and gs % config.save_steps == 0
                        and gs < self.total_steps):
            raise_if_nonfinite(self.bad_step, acc, self.out, model, optimizer, gs)
            ckpt.save_checkpoint(acc, self.out, self.saved_state(), config.save_total_limit)
        self.interrupted = stopping
        return stopping

    def tokens_per_second(self) -> float:
        return self.session_tokens / max(time.time() - self.t_loop, 1e-9)

    def saved_state(self) -> dict:
        extra = self.extra_state() if self.extra_state is not None else {}
        return {**self.state, **extra, "train_seconds": self.state["train_seconds"] + time.time()
                - self.t_start, "num_tokens": self.num_tokens}

    def finish(self, model, optimizer) -> dict:
        """The loop ended: the last finite check, the time and tokens of this session added
        to the state. -> the final state."""
        self.bar.close()
        raise_if_nonfinite(self.bad_step, self.accelerator, self.out, model, optimizer,
                           self.state["global_step"])
        self.state = self.saved_state()
        self.session_tokens = 0
        return self.state

    def summary(self, t_begin: float, **extra: Any) -> dict:
        """The train summary's common fields (``extra`` adds or overrides)."""
        return {"train_seconds": self.state["train_seconds"],
                "total_seconds": time.time() - t_begin,
                "global_step": self.state["global_step"], "max_steps": self.total_steps,
                "num_tokens": self.state["num_tokens"], "interrupted": self.interrupted,
                "final": self.last, "steps_per_epoch": self.steps_per_epoch,
                "output_dir": str(self.out),
                "model_dir": None if self.interrupted else str(self.out / "model"),
                # glibc's small-block caches off (safedpo.heap: the command does it)
                "heap_tuned": heap_tuned(), **extra}

    def write_summary(self, summary: dict) -> dict:
        if self.accelerator.is_main_process:
            (self.out / "train_summary.json").write_text(
                json.dumps(summary, indent=2, default=str))
        self.accelerator.wait_for_everyone()
        return summary
