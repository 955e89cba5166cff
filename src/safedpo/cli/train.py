"""``safedpo train``, ``sft``, ``rm``, ``cm`` and ``saferlhf``: the engines of
``safedpo.train.engines.ENGINES``; a YAML config plus one documented option per field of the
engine's settings type, resolved by ``safedpo.config.resolve``."""

from __future__ import annotations

import argparse
import json
import sys

from safedpo.config import (
    ConfigError,
    TrainConfig,
    add_config_options,
    args_layer,
    file_layer,
    resolve,
)
from safedpo.data.types import DataError
from safedpo.models.sources import MissingPackageError
from safedpo.train.engines import engine, run_engine

_EXAMPLES = {
    "train": "example: safedpo train --config configs/tiny-cpu.yaml "
             "--model_name_or_path runs/sft/model --dataset data/train.jsonl --beta 0.05",
    "sft": "example: safedpo sft --config configs/tiny-cpu.yaml "
           "--model_name_or_path tiny-model --dataset data/sft.jsonl --output_dir runs/sft",
    "rm": "example: safedpo rm --model_name_or_path runs/sft/model --dataset data/train.jsonl "
          "--output_dir runs/rm (then: safedpo eval --scorer reward:runs/rm/model)",
    "cm": "example: safedpo cm --model_name_or_path runs/sft/model --dataset data/train.jsonl "
          "--output_dir runs/cm (then: safedpo eval --scorer cost:runs/cm/model)",
    "saferlhf": "example: safedpo saferlhf --config configs/saferlhf-tiny.yaml "
                "--model_name_or_path runs/sft/model --dataset data/train.jsonl "
                "(reward/cost models: --reward_model_path runs/rm/model --cost_model_path "
                "runs/cm/model, or none to train both first)",
}


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.epilog = (_EXAMPLES[name] + ". Options override the config file; lists take "
                     "several values (or a,b), dicts take YAML ('{a: 1}'), 'none' means None, "
                     "a bare boolean flag means true. "
                     "Multi-GPU: accelerate launch --config_file configs/accelerate/zero3.yaml "
                     "-m safedpo.cli " + name + " ...")
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="config file (e.g. configs/tiny-cpu.yaml); default: built-in "
                             "defaults (the paper's hyperparameters)")
    add_config_options(parser, cls=engine(name).settings)


def config_from_args(args: argparse.Namespace, cls: type = TrainConfig):
    """``cls`` (an engine's settings) from ``--config`` and every option given on the command
    line."""
    layers = [file_layer(args.config)] if args.config is not None else []
    return resolve([*layers, args_layer(args, cls=cls)], cls)


def run(name: str, args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args, engine(name).settings)
        summary = run_engine(name, config)  # imports the engine (torch) only now
    except (ConfigError, DataError, OSError, MissingPackageError) as e:
        # OSError: a model or file that cannot be found/loaded (transformers' hub errors too)
        print(f"safedpo {name}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"safedpo {name}: error: {e}", file=sys.stderr)
        return 1
    if summary.get("interrupted"):
        print(f"interrupted at step {summary['global_step']}; resume with "
              f"--resume_from_checkpoint latest --output_dir {summary['output_dir']}",
              file=sys.stderr)
        return 130
    print(json.dumps({"output_dir": summary["output_dir"], "global_step": summary["global_step"],
                      "train_seconds": round(summary["train_seconds"], 2),
                      "final": summary["final"]}, indent=2))
    return 0
