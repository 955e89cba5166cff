"""Issue 23 (6): SafeDPO at Delta 0, 1, 10 on SmolLM2 (configs/compare-real-delta.yaml).

Reads each run's held-out answers (runs/real/compare-delta/*/eval/compare/generations.jsonl)
and the reference's (runs/real/compare/reference/eval), judges them with the CURRENT
three-outcome judge, and writes docs/real_delta.json, docs/real-delta.png (harmful refusal and
benign over-refusal against Delta, Wilson 95% intervals) and a Markdown table on stdout, with
McNemar's exact test of each Delta against Delta 10 on the same prompts.

    python scripts/real_delta_table.py [--runs runs/real/compare-delta] [--reference DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safedpo.evaluate.outcomes import judge, judged_rates, markdown_table, paired_refusals
from safedpo.evaluate.outcomes import read_rows as _rows


def summarize(rows: list[dict]) -> tuple[dict, list[str]]:
    outcomes = judge(rows)
    return judged_rates(rows, outcomes), outcomes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/real/compare-delta")
    p.add_argument("--reference", default="runs/real/compare/reference/eval")
    p.add_argument("--out", default="docs/real_delta.json")
    p.add_argument("--plot", default="docs/real-delta.png")
    args = p.parse_args()
    runs = {}
    for path in sorted(Path(args.runs).glob("safedpo_delta*/eval/compare/generations.jsonl")):
        delta = float(path.parts[-4].removeprefix("safedpo_delta"))
        runs[delta] = _rows(path)
    result: dict = {"reference": summarize(_rows(args.reference))[0],
                    "delta": {}, "paired_vs_delta10": {}}
    judged = {d: summarize(rows) for d, rows in sorted(runs.items())}
    for d, (summary, _) in judged.items():
        result["delta"][str(d)] = summary
    if 10.0 in judged:
        base_rows, base = runs[10.0], judged[10.0][1]
        for d, (_, outs) in judged.items():
            if d != 10.0:
                result["paired_vs_delta10"][str(d)] = paired_refusals(base_rows, outs, base,
                                                                      runs[d])
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deltas = sorted(judged)
    xs = range(len(deltas))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label, marker in (("harmful_refusal", "refuses harmful prompts", "o"),
                               ("over_refusal", "refuses benign prompts", "s")):
        est = [result["delta"][str(d)][key] for d in deltas]
        ax.errorbar(xs, [100 * e["value"] for e in est],
                    yerr=[[100 * (e["value"] - e["ci_low"]) for e in est],
                          [100 * (e["ci_high"] - e["value"]) for e in est]],
                    marker=marker, capsize=4, label=label)
        ref = result["reference"][key]["value"]
        ax.axhline(100 * ref, linestyle=":", color=ax.lines[-1].get_color(), linewidth=1)
    ax.set_xticks(list(xs), [f"Delta {d:g}" for d in deltas])
    ax.set_ylabel("% of held-out prompts (Wilson 95%)")
    ax.set_ylim(-5, 105)
    ax.set_title("SafeDPO on SmolLM2-135M: Delta (dotted: reference)\n"
                 "2 cores, Intel Xeon AVX512-BF16, 2026-12-06", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)

    lines = markdown_table("Delta", [("reference", result["reference"])] + [
        (f"{d:g}", result["delta"][str(d)]) for d in deltas],
        ("harmful_refusal", "harmful_compliance", "harmful_nonanswer", "over_refusal"))
    for d, pairs in result["paired_vs_delta10"].items():
        h = pairs["harmful_refusal"]
        lines.append(f"\nDelta {float(d):g} vs 10, harmful refusals: {h['first_only']} only at "
                     f"{float(d):g} / {h['second_only']} only at 10, p = {h['p_value']:.3g}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
