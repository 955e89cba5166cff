"""``safedpo compare``, ``sacpo`` and ``sweep``: the options, and ``run``, which hands the plan
to ``safedpo.pipelines.compare`` (imported only then: it loads torch, and --help must stay fast)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safedpo.config import ConfigError, SafeRLHFConfig, add_config_options, args_layer
from safedpo.models.sources import MissingPackageError

_EPILOG = {
    "compare": "example: safedpo compare --config configs/compare-tiny.yaml "
               "--model_name_or_path runs/sft/model --dataset data/train.jsonl",
    "sacpo": "example: safedpo sacpo --config configs/sacpo.yaml --output_dir runs/sacpo",
    "sweep": "example: safedpo sweep --config configs/sweep-delta.yaml --deltas 0 2 5 10 20",
}
_SKIP = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint")


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.epilog = (_EPILOG[name] + ". Training options (--beta, --dataset, ...) apply to every "
                     "run and win over the config files. Runs whose config and inputs did not "
                     "change are reused; --force redoes them.")
    parser.add_argument("--config", required=True, metavar="YAML", help=f"{name} config file")
    parser.add_argument("--output_dir", default=None,
                        help="where runs and the report go (default: the config's output_dir)")
    parser.add_argument("--force", action="store_true",
                        help="retrain and re-evaluate even when a run could be reused, and "
                             "replace a run dir that compare did not make (e.g. a safedpo "
                             "train run at OUTPUT_DIR/NAME)")
    if name == "compare":
        parser.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                            help="only these methods of the config")
    if name == "sweep":
        parser.add_argument("--deltas", nargs="+", type=float, default=None, metavar="DELTA",
                            help="values of Delta to train (default: the config's deltas)")
    if name != "sacpo":
        parser.add_argument("--prompts", default=None,
                            help="evaluation prompts (overrides evaluation.prompts)")
        parser.add_argument("--max_prompts", type=int, default=None,
                            help="evaluate only the first N prompts")
    group = parser.add_argument_group("training options for every run")
    # Every engine's settings (SafeRLHFConfig holds TrainConfig's): each run takes the ones
    # its engine reads.
    add_config_options(group, cls=SafeRLHFConfig, prefix="train_", skip=_SKIP,
                       show_defaults=False)


def run(name: str, args: argparse.Namespace) -> int:
    from safedpo.pipelines.compare import (  # heavy: torch, accelerate
        is_main_process,
        load_plan,
        run_plan,
    )

    try:
        cli = args_layer(args, prefix="train_", cls=SafeRLHFConfig)
        plan = load_plan(name, args.config, cli=cli,
                         output_dir=args.output_dir, only=getattr(args, "methods", None),
                         deltas=getattr(args, "deltas", None),
                         prompts=getattr(args, "prompts", None),
                         max_prompts=getattr(args, "max_prompts", None))
        summary = run_plan(plan, force=args.force,
                           log=lambda msg: print(f"[safedpo {name}] {msg}", file=sys.stderr))
    except (ConfigError, FileNotFoundError, ValueError, MissingPackageError) as e:
        # ValueError: DataError too (a bad row found while evaluating, a damaged metrics.json)
        print(f"safedpo {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"safedpo {name}: {e or 'interrupted'}; run the same command again to go on",
              file=sys.stderr)
        return 130
    if is_main_process():
        rows = {n: {"train_seconds": round(r["train_seconds"], 2), "reused": r["reused"],
                    "run_dir": r["run_dir"]} for n, r in summary["methods"].items()}
        print(json.dumps({"output_dir": summary["output_dir"], "methods": rows,
                          "report": summary.get("report")}, indent=2))
        if "report" in summary:
            print(Path(summary["report"]["markdown"]).read_text())
    return 0
