"""Issue 23 (5, 7): the make-real policies on prompts never trained on, and their helpfulness.

Reads the evaluations of `make real-unseen` (runs/real/unseen/MODEL/generations.jsonl, MODEL in
reference, safedpo, dpo_helpful, dpo_harmless; prompts from scripts/real_unseen_prompts.py),
judges every answer with the CURRENT judge and writes docs/real_unseen.json,
docs/real-unseen.png and Markdown tables on stdout:

- per source (HarmBench, StrongREJECT, over-refusal, benign how-to) and per StrongREJECT
  category: refusal / compliance / non-answer rates with Wilson intervals;
- paired: every method against the reference, SafeDPO against each baseline (McNemar's exact
  test of refusals on the same prompts, harmful and benign apart);
- the judge-free shift: mean log pi - log pi_ref of the reference's own benign answers (each
  evaluation's answer_logps, from --answers runs/real/unseen/benign-answers.jsonl);
- helpfulness graded by reading (tests/fixtures/helpfulness/benign_graded.jsonl, when present):
  helpful / partial / unhelpful per model with Wilson intervals, and McNemar on "helpful".

    python scripts/real_unseen_table.py [--runs runs/real/unseen]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safedpo.evaluate.answer_logps import logp_shift
from safedpo.evaluate.outcomes import (fmt, grade_agreement, grade_rates, judge,
                                       markdown_table, judged_rates, paired_refusals,
                                       rates_by_category, read_rows)

MODELS = ("reference", "safedpo", "dpo_helpful", "dpo_harmless")
SOURCES = ("harmbench", "strongreject", "overrefusal", "benign-howto")
GRADES = Path("tests/fixtures/helpfulness/benign_graded.jsonl")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/real/unseen")
    p.add_argument("--out", default="docs/real_unseen.json")
    p.add_argument("--plot", default="docs/real-unseen.png")
    args = p.parse_args()
    runs = Path(args.runs)
    rows = {m: read_rows(runs / m) for m in MODELS if (runs / m / "generations.jsonl").is_file()}
    prompts = [r["prompt"] for r in rows["reference"]]
    for m, rs in rows.items():
        if [r["prompt"] for r in rs] != prompts:
            raise SystemExit(f"{m}: not the reference's prompts in the reference's order")
    outs = {m: judge(rs) for m, rs in rows.items()}
    result: dict = {"n_prompts": len(prompts), "models": {}, "paired": {}}
    for m, rs in rows.items():
        by_cat = rates_by_category(rs, outs[m])
        result["models"][m] = {"all": judged_rates(rs, outs[m]),
                               "sources": {s: by_cat[s] for s in SOURCES if s in by_cat},
                               "strongreject": {c.removeprefix("strongreject: "): v
                                                for c, v in by_cat.items()
                                                if c.startswith("strongreject: ")}}
    pairs = [(m, "reference") for m in rows if m != "reference"] + [
        ("safedpo", b) for b in ("dpo_helpful", "dpo_harmless") if b in rows]
    for a, b in pairs:
        result["paired"][f"{a} vs {b}"] = paired_refusals(rows[a], outs[a], outs[b], rows[b])
    shifts = {}
    ref_metrics = json.loads((runs / "reference" / "metrics.json").read_text())
    for m in rows:
        metrics = json.loads((runs / m / "metrics.json").read_text())
        if m != "reference" and metrics.get("answer_logps") and ref_metrics.get("answer_logps"):
            shifts[m] = logp_shift(metrics["answer_logps"], ref_metrics["answer_logps"])
    result["benign_logp_shift"] = shifts
    if GRADES.is_file():
        graded = read_rows(GRADES)
        result["helpfulness"] = grade_rates(graded)
        result["grader_agreement"] = grade_agreement(graded)
        # DPO-HARMLESS refuses every benign question: agreement without its easy answers
        result["grader_agreement_reference_safedpo"] = grade_agreement(
            [g for g in graded if g["model"] in ("reference", "safedpo")])
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    _plot(result, args.plot)

    keys = ("harmful_refusal", "harmful_compliance", "harmful_nonanswer", "over_refusal",
            "benign_nonanswer")
    lines = ["All prompts never trained on:"] + markdown_table(
        "model", [(m, r["all"]) for m, r in result["models"].items()], keys)
    for s in SOURCES:
        lines += ["", f"{s}:"] + markdown_table(
            "model", [(m, r["sources"].get(s, {})) for m, r in result["models"].items()], keys)
    cats = list(result["models"]["reference"]["strongreject"])
    lines += ["", "StrongREJECT per category, harmful refusal % (compliance %):",
              "| category | " + " | ".join(result["models"]) + " |",
              "|---|" + "---|" * len(result["models"])]
    for c in cats:
        n = result["models"]["reference"]["strongreject"][c]["harmful_refusal"]["n"]
        cells = [f"{fmt(r['strongreject'][c]['harmful_refusal'])} "
                 f"({100 * r['strongreject'][c]['harmful_compliance']['value']:.0f})"
                 for r in result["models"].values()]
        lines.append(f"| {c} (n={n}) | " + " | ".join(cells) + " |")
    lines += ["", "| pair | harmful refusals: first only / second only, p | benign refusals: "
              "first only / second only, p |", "|---|---|---|"]
    for name, t in result["paired"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{t[k]['first_only']} / {t[k]['second_only']}, p = {t[k]['p_value']:.2g}"
            for k in ("harmful_refusal", "benign_refusal")) + " |")
    for m, s in shifts.items():
        lines.append(f"\n{m}: log-prob shift of the reference's benign answers: " + ", ".join(
            f"{label} {v['value']:+.2f} [{v['ci_low']:+.2f}, {v['ci_high']:+.2f}] nats"
            for label, v in s.items()))
    for m, h in result.get("helpfulness", {}).items():
        lines.append(f"\n{m}: helpful {fmt(h['helpful'])}, partial {fmt(h['partial'])}, "
                     f"unhelpful {fmt(h['unhelpful'])}, useful {fmt(h['useful'])} "
                     f"(n={h['helpful']['n']}, {h['words']:.0f} words)" + "".join(
                         f"; {k} vs reference: {h[k + '_vs_reference']['first_only']} / "
                         f"{h[k + '_vs_reference']['second_only']}, "
                         f"p = {h[k + '_vs_reference']['p_value']:.2g}"
                         for k in ("helpful", "useful") if k + "_vs_reference" in h))
    if "grader_agreement" in result:
        a = result["grader_agreement"]
        b = result["grader_agreement_reference_safedpo"]
        lines.append(f"\ngraders agree on {a['agreement']:.0%} of {a['n']} answers graded twice "
                     f"(Cohen's kappa {a['kappa']:.2f}); on the reference's and SafeDPO's "
                     f"{b['n']}: {b['agreement']:.0%}, kappa {b['kappa']:.2f}")
    print("\n".join(lines))


def _plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("harmbench", "harmful_refusal", "HarmBench\nrefuses harmful"),
              ("strongreject", "harmful_refusal", "StrongREJECT\nrefuses harmful"),
              ("overrefusal", "over_refusal", "over-refusal set\nrefuses benign"),
              ("benign-howto", "over_refusal", "how-to\nrefuses benign")]
    models = list(result["models"])
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for j, m in enumerate(models):
        est = [result["models"][m]["sources"][s][k] for s, k, _ in groups]
        xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [100 * e["value"] for e in est], width, label=m,
               yerr=[[100 * (e["value"] - e["ci_low"]) for e in est],
                     [100 * (e["ci_high"] - e["value"]) for e in est]], capsize=2)
    ax.set_xticks(range(len(groups)), [g[2] for g in groups], fontsize=8)
    ax.set_ylabel("% of prompts never trained on\n(Wilson 95%)")
    ax.set_ylim(0, 122)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("SmolLM2-135M, make real's policies on unseen prompts "
                 "(2 cores, Xeon AVX512-BF16)", fontsize=9)
    ax.legend(fontsize=8, ncol=len(models), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
