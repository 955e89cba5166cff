"""``safedpo demo``: the options, and ``run``, which starts ``safedpo.pipelines.demo`` (imported only
then: it loads torch, and --help must stay fast)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0,
                        help="world, data, model initialisation and training seed")
    parser.add_argument("--output-dir", default="runs/demo", help="where everything goes")
    parser.add_argument("--fast", action="store_true",
                        help="smoke mode: a very small model and a few steps (numbers are "
                             "meaningless; checks that the pipeline runs)")
    parser.add_argument("--delta", type=float, default=None,
                        help="SafeDPO's Delta (the paper uses 10); default: the recipe's (0.5)")
    parser.add_argument("--rpo-alpha", type=float, default=None,
                        help="weight of an NLL term on the chosen answer (RPO) in every "
                             "preference run; None = off")
    parser.add_argument("--no-sampling", action="store_true",
                        help="skip the sampled cross-check (exact metrics only)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; None = torch's choice")
    parser.add_argument("--recipe", default=None, metavar="YAML",
                        help="the demo's recipe: world size, model, training settings; None = "
                             "configs/demo.yaml of this repository")


def run(name: str, args: argparse.Namespace) -> int:
    from safedpo.pipelines.demo import (  # heavy: torch, transformers
        RECIPE_FILE,
        render_table,
        run_demo,
    )

    try:
        report = run_demo(seed=args.seed, output_dir=args.output_dir, fast=args.fast,
                          delta=args.delta, rpo_alpha=args.rpo_alpha,
                          sampling=not args.no_sampling, threads=args.threads,
                          recipe=args.recipe or RECIPE_FILE)
    except KeyboardInterrupt as e:  # a training stage stopped on SIGINT/SIGTERM
        print(f"safedpo demo: {e or 'interrupted'}; the demo stopped there (nothing after "
              "it ran). Run the same command again to redo the demo", file=sys.stderr)
        return 130
    out = Path(args.output_dir)
    print()
    print(render_table(report))
    print()
    print(f"Report: {out / 'report.md'}  (plot: {out / 'frontier.png'}, "
          f"numbers: {out / 'report.json'})  total {report['seconds_total']:.0f} s")
    return 0
