"""The one engine table: an engine's name -> its runner and its settings type.

``safedpo sft|train|rm|cm|saferlhf`` are these engines, a compare method picks one with
``engine: NAME`` (default ``train``), and every runner starts with ``check_settings``: nothing
else decides which loop trains a config. The table imports no torch (``--help`` stays fast):
a runner is imported when a run starts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from safedpo.config import ConfigError, SafeRLHFConfig, TrainConfig


@dataclass(frozen=True)
class Engine:
    runner: str     # "module:function(config, ...) -> train summary"
    settings: type  # the config dataclass it reads (TRL: one config per trainer)
    help: str


ENGINES: dict[str, Engine] = {
    "sft": Engine("safedpo.train.loop:sft", TrainConfig,
                  "supervised fine-tuning: make the reference model"),
    "train": Engine("safedpo.train.loop:train", TrainConfig,
                    "train a policy with SafeDPO, DPO or a baseline loss"),
    "rm": Engine("safedpo.train.score_models:train_reward_model", TrainConfig,
                 "train a reward model (Bradley-Terry on better_response_id)"),
    "cm": Engine("safedpo.train.score_models:train_cost_model", TrainConfig,
                 "train a cost model (safer_response_id + safety labels; cost > 0 = unsafe)"),
    "saferlhf": Engine("safedpo.train.ppo_lagrangian:train", SafeRLHFConfig,
                       "Safe RLHF: PPO-Lagrangian with a reward and a cost model"),
}


def engine(name: str) -> Engine:
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[name]


def check_settings(name: str, config: TrainConfig) -> None:
    """The guard every runner starts with: ``config`` is exactly engine ``name``'s settings
    type (a SafeRLHFConfig given to ``train`` would silently ignore its PPO settings)."""
    want = engine(name).settings
    if type(config) is not want:
        owner = next((n for n, e in ENGINES.items() if e.settings is type(config)), None)
        raise ConfigError(f"engine {name} takes a {want.__name__}, got a "
                          f"{type(config).__name__}" + (f" (run it with engine {owner})"
                                                        if owner else ""))


def run_engine(name: str, config: TrainConfig, **kwargs: Any) -> dict:
    """Train ``config`` with engine ``name``; -> its train summary."""
    module, function = engine(name).runner.split(":")
    return getattr(importlib.import_module(module), function)(config, **kwargs)
