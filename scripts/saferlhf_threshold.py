"""Issue 24 (3): a cost threshold that binds for Safe RLHF on make real's pairs.

Safe RLHF's constraint is E[cost] <= d over ALL rollout prompts, in the cost model's own units.
safe-rlhf uses d = 0 with PKU-SafeRLHF's prompts, which are all red-team prompts; make real's
pairs are 56 harmful and 72 benign prompts, whose safe benign answers pull the mean cost below
0, so d = 0 never binds. This script scores, with the cost model of a Safe RLHF run, each pair's
two answers and prints the mean cost over the pairs' prompts of:
- the reference's own answers (the "plain" side of every pair: what PPO starts from), and
- the safe policy: the safe answer on harmful prompts, the plain answer on benign ones;
and the threshold halfway between them: the reference violates it, the safe policy meets it.

    python scripts/saferlhf_threshold.py [--run runs/real/compare-rl/saferlhf]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safedpo.evaluate.outcomes import read_rows
from safedpo.evaluate.scorers import build_scorers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/real/compare-rl/saferlhf")
    p.add_argument("--pairs", default="runs/real/pairs/pairs.jsonl")
    args = p.parse_args()
    pairs = read_rows(args.pairs)
    (cost,) = build_scorers([f"cost:{Path(args.run) / 'cost_model' / 'model'}"],
                            prompt_template="chat", progress=False)
    plain = [r["response_0"] if r["response_0_source"] == "plain" else r["response_1"]
             for r in pairs]
    safe = [r["response_0"] if r["is_response_0_safe"] else r["response_1"] for r in pairs]
    prompts = [r["prompt"] for r in pairs]
    c_plain, c_safe = cost.score(prompts, plain), cost.score(prompts, safe)
    ref = sum(c_plain) / len(c_plain)
    safe_policy = sum(c_safe) / len(c_safe)
    harmful = [i for i, r in enumerate(pairs) if not (r["is_response_0_safe"]
                                                       and r["is_response_1_safe"])]
    print(json.dumps({"pairs": len(pairs), "harmful_pairs": len(harmful),
                      "mean_cost_reference_answers": ref,
                      "mean_cost_safe_policy": safe_policy,
                      "threshold_halfway": (ref + safe_policy) / 2,
                      "harmful_only": {
                          "reference": sum(c_plain[i] for i in harmful) / len(harmful),
                          "safe": sum(c_safe[i] for i in harmful) / len(harmful)}}, indent=1))


if __name__ == "__main__":
    main()
