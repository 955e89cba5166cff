"""``safedpo eval`` and ``safedpo report``. Heavy libraries are imported inside run()."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safedpo.cli.common import HelpFormatter, add_generation_options
from safedpo.models.sources import MissingPackageError, check_model

EVAL_EPILOG = """scorers (repeat --scorer):
  oracle          the synthetic world's oracle reward and cost, and the share of garbled
                  answers (garbled text counts as safe but earns the lowest reward)
  refusal         XSTest string-match refusal detector (over-refusal on benign prompts)
  refusal-cost    AdvBench/GCG refusal prefixes: a harmful prompt answered without refusal is
                  unsafe (crude, text-only; prefer a cost model)
  reward:PATH     reward model: sequence classifier with num_labels=1, or a safe-rlhf score
                  model such as PKU-Alignment/beaver-7b-unified-reward
  cost:PATH       cost model, same formats (cost > 0 = unsafe), e.g. beaver-7b-unified-cost
default: oracle + refusal for --prompts world, else refusal + refusal-cost.

examples:
  safedpo eval --model runs/safedpo --prompts world
  safedpo eval --model runs/safedpo --prompts PKU-Alignment/PKU-SafeRLHF-30K \\
      --scorer reward:PKU-Alignment/beaver-7b-unified-reward \\
      --scorer cost:PKU-Alignment/beaver-7b-unified-cost --scorer refusal
  safedpo eval --model runs/safedpo --prompts xstest_prompts.csv --scorer refusal
"""

REPORT_EPILOG = """example:
  safedpo report runs/sft runs/dpo-helpful runs/safedpo --reference runs/sft \\
      --helpful runs/dpo-helpful --output-dir report
"""


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    if name == "eval":
        parser.epilog = EVAL_EPILOG
        parser.add_argument("--model", required=True,
                            help="run dir (from safedpo train/sft), model dir, adapter dir or "
                                 "hub id")
        parser.add_argument("--prompts", required=True,
                            help="'world' (synthetic held-out prompts); a public benchmark read "
                                 "from its PyPI package: advbench, harmbench, donotanswer, "
                                 "strongreject, overrefusal, benign-howto (NAME:N: N prompts "
                                 "spread over it), or several joined with '+' "
                                 "(harmbench:24+overrefusal); a preference dataset (unique "
                                 "prompts of --split); or a jsonl/csv of prompts (XSTest csv "
                                 "format works)")
        parser.add_argument("--output-dir", default=None,
                            help="where to write generations.jsonl, metrics.json, report.md "
                                 "(default: RUN_DIR/eval/PROMPT_SET for a run dir)")
        parser.add_argument("--scorer", action="append", default=None, metavar="SPEC",
                            help="a scorer (repeatable); see below")
        parser.add_argument("--split", default="test", help="dataset split for the prompts")
        parser.add_argument("--prompt-column", default="prompt")
        parser.add_argument("--max-prompts", type=int, default=None,
                            help="evaluate only the first N prompts")
        parser.add_argument("--world-seed", type=int, default=None,
                            help="seed of the synthetic world (prompts 'world', oracle scorers; "
                                 "default: the N of --prompts world:N, else 0)")
        parser.add_argument("--do-sample", action="store_true",
                            help="sample (default: greedy decoding)")
        add_generation_options(parser)
        parser.add_argument("--reference", default=None,
                            help="an evaluation dir of the reference model: adds the win rate "
                                 "against its responses (by the reward scorer)")
        parser.add_argument("--trust-remote-code", action="store_true",
                            help="let the model's files run their own Python code (auto_map); "
                                 "only this flag turns it on, never a run dir's config.yaml")
        parser.add_argument("--label", default=None, help="method name shown in reports")
        parser.add_argument("--answers", default=None, metavar="JSONL",
                            help="given answers {prompt, response, label} whose log-prob under "
                                 "the model is recorded; `safedpo report` shows the change vs "
                                 "the reference per label (judge-free; e.g. the answers.jsonl "
                                 "of `safedpo pairs` on held-out harmful prompts)")
        parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for CIs")
        parser.add_argument("--overwrite", action="store_true",
                            help="discard earlier generations in the output dir instead of "
                                 "resuming")
    else:
        parser.epilog = REPORT_EPILOG
        parser.add_argument("runs", nargs="+", metavar="RUN",
                            help="evaluation dirs (with metrics.json) or run dirs with one "
                                 "evaluation under eval/")
        parser.add_argument("--output-dir", default="report",
                            help="where to write report.md, frontier.png and report.json")
        parser.add_argument("--reference", default=None,
                            help="the SFT reference run (label or dir): helpfulness 0, and win "
                                 "rates are against it")
        parser.add_argument("--helpful", default=None,
                            help="the DPO-HELPFUL run (label or dir): helpfulness 10")
        parser.add_argument("--labels", nargs="+", default=None,
                            help="method names, one per RUN (default: from metrics.json)")
        parser.add_argument("--title", default=None)
        parser.add_argument("--n-boot", type=int, default=1000)


def default_output_dir(model: str, prompts: str) -> Path:
    """RUN_DIR/eval/PROMPT_SET when --model is a run dir (has config.yaml)."""
    run_dir = Path(model)
    if not run_dir.exists():
        raise FileNotFoundError(f"model not found: {model} (no such run dir; for a hub id, "
                                "pass --output-dir)")
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"--output-dir is required: {model} is not a run dir with config.yaml")
    name = Path(prompts.rstrip("/")).stem if Path(prompts).exists() else prompts
    return run_dir / "eval" / name.replace("/", "_").replace(":", "_")


def run(name: str, args: argparse.Namespace) -> int:
    """Bad input (missing paths, mismatched scorers, bad data, a missing model package) gives
    one line 'safedpo NAME: error: ...' and exit code 2, not a traceback."""
    try:
        return _eval(args) if name == "eval" else _report(args)
    except (FileNotFoundError, ValueError, MissingPackageError) as e:  # ValueError: DataError too
        print(f"safedpo {name}: error: {e}", file=sys.stderr)
        return 2


def _eval(args: argparse.Namespace) -> int:
    # heavy (torch, through tokenization): imported when a run starts, so --help stays fast
    from safedpo.evaluate.report import fmt
    from safedpo.evaluate.runner import evaluate
    from safedpo.train.checkpoint import lock_output_dir

    check_model(args.model)
    out_dir = Path(args.output_dir) if args.output_dir else \
        default_output_dir(args.model, args.prompts)
    lock = lock_output_dir(out_dir)  # one run per output dir: two would interleave rows
    try:
        m = evaluate(args.model, args.prompts, out_dir, scorers=args.scorer,
                     prompt_template=args.prompt_template, max_new_tokens=args.max_new_tokens,
                     max_prompt_length=args.max_prompt_length,
                     do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p,
                     seed=args.seed, batch_size=args.batch_size, split=args.split,
                     prompt_column=args.prompt_column, max_prompts=args.max_prompts,
                     world_seed=args.world_seed, reference=args.reference, label=args.label,
                     answers=args.answers,
                     n_boot=args.n_boot, dtype=args.dtype, overwrite=args.overwrite,
                     progress=not args.no_progress, trust_remote_code=args.trust_remote_code)
    finally:
        lock.close()
    print(f"{m['label']}: {m['n_prompts']} prompts")
    for key, pct in (("harmless_ratio", True), ("mean_cost", False), ("mean_reward", False),
                     ("over_refusal_rate", True), ("win_rate", True)):
        if m.get(key):
            print(f"  {key:18s} {fmt(m[key], pct=pct)}")
    garbled = m["per_scorer"].get("oracle_garbled")
    if garbled:
        print(f"  {'garbled (oracle)':18s} {fmt(garbled['mean'], pct=True)}")
    print(f"report: {out_dir / 'report.md'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    # heavy (torch, through tokenization): imported when a run starts, so --help stays fast
    from safedpo.evaluate.report import write_report

    paths = write_report(args.runs, args.output_dir, reference=args.reference,
                         helpful=args.helpful, labels=args.labels, title=args.title,
                         n_boot=args.n_boot)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0
