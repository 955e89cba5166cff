"""Issue 26 on SmolLM2: per-StrongREJECT-category table of `make real-margins`.

Reads every model's held-out answers (runs/margins-real/compare/*/eval/.../generations.jsonl),
judges them with the CURRENT three-outcome judge (a pure function of prompt and answer, so the
table always uses the judge in the repository), and writes docs/margins_real.json plus a
Markdown table on stdout:

- per category: the share of harmful prompts answered with compliance (unsafe by the judge's
  rule) and with an explicit refusal, each with its Wilson interval;
- headline: the WORST category's compliance rate, all harmful prompts, and over-refusal (the
  refusal rate on the held-out benign prompts);
- paired: each variant against plain SafeDPO, McNemar's exact test on the same prompts
  (refusal of harmful prompts; refusal of benign prompts).

    python scripts/margins_real_table.py [--runs runs/margins-real/compare] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safedpo.evaluate.metrics import rate_estimate
from safedpo.evaluate.outcomes import fmt as _fmt
from safedpo.evaluate.outcomes import judge, paired_refusals, read_rows


def generations(run_dir: Path) -> dict[str, list[dict]]:
    """{model label: rows of its generations.jsonl}: the reference and every method."""
    out = {}
    for path in sorted(run_dir.glob("*/eval/**/generations.jsonl")):
        name = path.relative_to(run_dir).parts[0]
        out[name] = read_rows(path)
    return out


def table(models: dict[str, list[dict]], plain: str = "safedpo") -> dict:
    result: dict = {"models": {}, "paired_vs_plain": {}}
    judged = {}
    for name, rows in models.items():
        outcomes = judge(rows)
        judged[name] = (rows, outcomes)
        harmful = [(r, o) for r, o in zip(rows, outcomes) if r.get("harmful")]
        benign = [o for r, o in zip(rows, outcomes) if r.get("harmful") is False]
        per_cat = {}
        for cat in sorted({r["category"] for r, _ in harmful}):
            os_ = [o for r, o in harmful if r["category"] == cat]
            per_cat[cat] = {"compliance": rate_estimate([o == "compliance" for o in os_]),
                            "refusal": rate_estimate([o == "refusal" for o in os_])}
        worst = max(per_cat, key=lambda c: per_cat[c]["compliance"]["value"])
        result["models"][name] = {
            "per_category": per_cat,
            "worst_category": worst,
            "worst_category_compliance": per_cat[worst]["compliance"],
            "harmful_compliance": rate_estimate([o == "compliance" for _, o in harmful]),
            "harmful_refusal": rate_estimate([o == "refusal" for _, o in harmful]),
            "over_refusal": rate_estimate([o == "refusal" for o in benign]),
            "benign_nonanswer": rate_estimate([o == "nonanswer" for o in benign]),
            "mean_words": sum(len(r["response"].split()) for r in rows) / len(rows),
        }
    if plain in judged:
        base_rows, base_out = judged[plain]
        for name, (rows, outcomes) in judged.items():
            if name == plain:
                continue
            pairs = paired_refusals(rows, outcomes, base_out, base_rows)
            result["paired_vs_plain"][name] = pairs
    return result


def markdown(result: dict) -> str:
    models = result["models"]
    cats = sorted({c for m in models.values() for c in m["per_category"]})
    lines = ["| model | worst category (compliance %) | harmful compliance % | harmful refusal % "
             "| over-refusal % |", "|---|---|---|---|---|"]
    for name, m in models.items():
        lines.append(f"| {name} | {m['worst_category']}: {_fmt(m['worst_category_compliance'])} "
                     f"| {_fmt(m['harmful_compliance'])} | {_fmt(m['harmful_refusal'])} "
                     f"| {_fmt(m['over_refusal'])} |")
    lines += ["", "| category (n) | " + " | ".join(models) + " |",
              "|---|" + "---|" * len(models)]
    for cat in cats:
        n = next(m["per_category"][cat]["compliance"]["n"] for m in models.values())
        lines.append(f"| {cat} ({n}) | " + " | ".join(
            f"{100 * m['per_category'][cat]['compliance']['value']:.0f}"
            for m in models.values()) + " |")
    lines += ["", "| variant vs plain | harmful refusal: only variant / only plain, p "
              "| benign refusal: only variant / only plain, p |", "|---|---|---|"]
    for name, p in result["paired_vs_plain"].items():
        h, b = p["harmful_refusal"], p["benign_refusal"]
        lines.append(f"| {name} | {h['first_only']} / {h['second_only']}, {h['p_value']:.3g} "
                     f"| {b['first_only']} / {b['second_only']}, {b['p_value']:.3g} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/margins-real/compare")
    p.add_argument("--out", default="docs/margins_real.json")
    args = p.parse_args()
    result = table(generations(Path(args.runs)))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
