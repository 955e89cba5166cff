"""Issue 23 (4): training seeds on SmolLM2 (configs/compare-real-seeds.yaml).

SafeDPO and DPO-HELPFUL at training seeds 42 (`make real`, runs/real/compare) and 1, 2
(runs/real/compare-seed1, -seed2), judged with the CURRENT three-outcome judge on the same held-out
prompts: per seed the rates with Wilson intervals, across seeds the mean and the range.
Writes docs/real_seeds.json and a Markdown table on stdout.

    python scripts/real_seeds_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

from safedpo.evaluate.outcomes import fmt, judge, judged_rates, read_rows

KEYS = ("harmful_refusal", "harmful_compliance", "harmful_nonanswer", "over_refusal")


def main() -> None:
    runs = {"safedpo": {42: Path("runs/real/compare/safedpo/eval/compare")},
            "dpo_helpful": {42: Path("runs/real/compare/dpo_helpful/eval/compare")}}
    for path in sorted(Path("runs/real").glob("compare-seed*/*/eval/compare")):
        seed, method = int(path.parts[-4].removeprefix("compare-seed")), path.parts[-3]
        runs[method][seed] = path
    result = {}
    lines = ["| method | seed | " + " | ".join(k.replace("_", " ") + " %" for k in KEYS) + " |",
             "|---|---|" + "---|" * len(KEYS)]
    for method, seeds in runs.items():
        per_seed = {}
        for s, p in sorted(seeds.items()):
            rows = read_rows(p)
            per_seed[s] = judged_rates(rows, judge(rows))
        values = {k: [per_seed[s][k]["value"] for s in per_seed] for k in KEYS}
        result[method] = {"per_seed": {str(s): v for s, v in per_seed.items()},
                          "across_seeds": {k: {"mean": sum(v) / len(v), "min": min(v),
                                               "max": max(v), "n_seeds": len(v)}
                                           for k, v in values.items()}}
        for s, summary in per_seed.items():
            lines.append(f"| {method} | {s} | " + " | ".join(fmt(summary[k]) for k in KEYS)
                         + " |")
        across = result[method]["across_seeds"]
        lines.append(f"| {method} | mean (min-max) | " + " | ".join(
            f"{100 * across[k]['mean']:.1f} ({100 * across[k]['min']:.1f}-"
            f"{100 * across[k]['max']:.1f})" for k in KEYS) + " |")
    Path("docs/real_seeds.json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
