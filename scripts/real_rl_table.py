"""Issue 24 (3): Safe RLHF and SACPO next to SafeDPO on SmolLM2-135M, with what each cost.

Reads make real's evaluations (runs/real/compare: reference, SafeDPO, DPO-HELPFUL,
DPO-HARMLESS) and those of `make real-rl` (runs/real/compare-rl: SACPO, Safe RLHF), all on the
same 72 held-out prompts, and writes docs/real_rl.json, docs/real-rl-lambda.png and Markdown
tables on stdout:

- the outcome judge (current version): refusal / compliance / non-answer with Wilson
  intervals; McNemar of each method against the reference and of SafeDPO against each;
- Safe RLHF's own reward and cost models (trained on the same pairs: labelled so) score every
  method's answers: mean reward on the benign prompts and on all, and the cost-judged
  harmless share (cost <= 0) of the harmful prompts;
- the cost of each method: training wall time, forward / backward passes in sequences, and
  generated tokens (Safe RLHF: reward model + cost model + PPO);
- lambda, the episode cost the constraint reads and the rollouts' reward along Safe RLHF's run.

    python scripts/real_rl_table.py [--real runs/real/compare] [--rl runs/real/compare-rl]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from saferlhf_cost import cpu_model, dpo_passes

from safedpo.evaluate.metrics import mean_estimate, rate_estimate
from safedpo.evaluate.outcomes import (fmt, judge, markdown_table, judged_rates,
                                       paired_refusals, read_rows)
from safedpo.evaluate.scorers import build_scorers

LABELS = {"reference": "reference", "safedpo": "SafeDPO", "dpo_helpful": "DPO-HELPFUL",
          "dpo_harmless": "DPO-HARMLESS", "sacpo": "SACPO", "saferlhf": "Safe RLHF",
          "saferlhf_binding": "Safe RLHF, binding threshold",
          "saferlhf_binding_kl": "Safe RLHF, binding threshold, KL 0.1"}
CONFIG_KEYS = ("learning_rate", "critic_learning_rate", "kl_coef", "cost_threshold",
               "lambda_init", "lambda_lr", "lambda_max", "num_train_epochs",
               "per_device_train_batch_size", "response_length", "num_ppo_epochs")


def _eval_dir(run: Path) -> Path:
    """A compare method's evaluation: RUN/eval (the reference), RUN/eval/compare, or its last
    stage's (SACPO: RUN/harmless/eval/compare)."""
    for d in (run / "eval", run / "eval" / "compare", run / "harmless" / "eval" / "compare"):
        if (d / "generations.jsonl").is_file():
            return d
    raise FileNotFoundError(f"no evaluation under {run}")


def costs(real: Path, rl: Path, rl_methods: list[str]) -> dict:
    """Training cost per method. A Safe RLHF run given the first run's reward and cost models
    (saferlhf_binding, saferlhf_binding_kl) is charged their training too, so each row is the
    whole method (the rows are not to be summed: the score models are shared)."""
    out = {m: dpo_passes(real / m) for m in ("safedpo", "dpo_helpful", "dpo_harmless")}
    stages = [dpo_passes(rl / "sacpo" / s) for s in ("helpful", "harmless")]
    out["sacpo"] = {k: sum(s[k] for s in stages) for k in stages[0]}
    first = json.loads((rl / "saferlhf" / "train_summary.json").read_text())
    score_seconds = {k: v["train_seconds"] for k, v in first["score_models"].items()}
    score_passes = {k: first["passes"][k] - first["ppo_passes"][k] for k in first["passes"]}
    for m in (m for m in rl_methods if m.startswith("saferlhf")):
        summary = json.loads((rl / m / "train_summary.json").read_text())
        own = bool(summary.get("score_models"))
        parts = {k: v["train_seconds"] for k, v in summary["score_models"].items()} if own \
            else {f"{k} (shared)": v for k, v in score_seconds.items()}
        out[m] = {"train_seconds": summary["train_seconds"] + (0 if own else
                                                               sum(score_seconds.values())),
                  "steps": summary["global_step"],
                  **{k: v + (0 if own else score_passes[k]) for k, v in summary["passes"].items()},
                  "parts_seconds": {"ppo": summary["ppo_seconds"], **parts}}
    return out


def score_model_table(rows: dict[str, list[dict]], rl: Path) -> dict:
    paths = {k: rl / "saferlhf" / f"{k}_model" / "model" for k in ("reward", "cost")}
    scorers = build_scorers([f"reward:{paths['reward']}", f"cost:{paths['cost']}"],
                            prompt_template="chat", progress=False)
    out = {}
    for m, rs in rows.items():
        prompts, answers = [r["prompt"] for r in rs], [r["response"] for r in rs]
        scores = {}
        for s in scorers:
            s.bind(rs)
            scores[s.kind] = s.score(prompts, answers)
        benign = [i for i, r in enumerate(rs) if r.get("harmful") is False]
        harmful = [i for i, r in enumerate(rs) if r.get("harmful")]
        out[m] = {"reward_all": mean_estimate(scores["reward"]),
                  "reward_benign": mean_estimate([scores["reward"][i] for i in benign]),
                  "cost_harmless": rate_estimate([scores["cost"][i] <= 0 for i in harmful])}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", default="runs/real/compare")
    p.add_argument("--rl", default="runs/real/compare-rl")
    p.add_argument("--out", default="docs/real_rl.json")
    p.add_argument("--plot", default="docs/real-rl-lambda.png")
    args = p.parse_args()
    real, rl = Path(args.real), Path(args.rl)
    dirs = {m: _eval_dir(real / m) for m in ("reference", "safedpo", "dpo_helpful",
                                             "dpo_harmless")}
    rl_methods = [m for m in ("sacpo", "saferlhf", "saferlhf_binding", "saferlhf_binding_kl")
                  if (rl / m / "train_summary.json").is_file()
                  or (rl / m / "helpful" / "train_summary.json").is_file()]
    dirs.update({m: _eval_dir(rl / m) for m in rl_methods})
    rows = {m: read_rows(d) for m, d in dirs.items()}
    outs = {m: judge(rs) for m, rs in rows.items()}
    result: dict = {"machine": cpu_model(), "outcomes": {m: judged_rates(rows[m], outs[m])
                                                         for m in rows}, "paired": {}}
    pairs = [(m, "reference") for m in rows if m != "reference"] + [
        ("safedpo", m) for m in rows if m not in ("reference", "safedpo")]
    for a, b in pairs:
        result["paired"][f"{a} vs {b}"] = paired_refusals(rows[a], outs[a], outs[b], rows[b])
    result["score_models"] = score_model_table(rows, rl)
    result["cost"] = costs(real, rl, rl_methods)
    curves = {}
    for m in (m for m in rl_methods if m.startswith("saferlhf")):
        log = read_rows(rl / m / "metrics.jsonl")
        curves[m] = [{k: r.get(k) for k in ("step", "lagrange/lambda", "lagrange/episode_cost",
                                            "cost/mean", "reward/mean", "kl")}
                     for r in log if "lagrange/lambda" in r]
        result["config_" + m] = {k: v for k, v in yaml.safe_load(
            (rl / m / "config.yaml").read_text()).items() if k in CONFIG_KEYS}
    result["saferlhf_curves"] = curves
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    _plot(curves, {m: result["config_" + m]["cost_threshold"] for m in curves}, args.plot)

    keys = ("harmful_refusal", "harmful_compliance", "harmful_nonanswer", "over_refusal",
            "benign_nonanswer")
    lines = ["Outcome judge, 72 held-out prompts (48 harmful, 24 benign):"] + markdown_table(
        "method", [(LABELS[m], r) for m, r in result["outcomes"].items()], keys)
    lines += ["", "| pair | harmful refusals: first only / second only, p | benign refusals |",
              "|---|---|---|"]
    for name, t in result["paired"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{t[k]['first_only']} / {t[k]['second_only']}, p = {t[k]['p_value']:.2g}"
            for k in ("harmful_refusal", "benign_refusal")) + " |")
    lines += ["", "Safe RLHF's reward and cost models (trained on the same pairs):",
              "| method | mean reward, benign | mean reward, all | harmless by cost % |",
              "|---|---|---|---|"]
    for m, s in result["score_models"].items():
        lines.append(f"| {LABELS[m]} | {s['reward_benign']['value']:+.2f} "
                     f"[{s['reward_benign']['ci_low']:+.2f}, {s['reward_benign']['ci_high']:+.2f}]"
                     f" | {s['reward_all']['value']:+.2f} | {fmt(s['cost_harmless'])} |")
    lines += ["", f"Cost of each method ({result['machine']}):",
              "| method | train s | forward passes | backward passes | generated tokens |",
              "|---|---|---|---|---|"]
    for m, c in result["cost"].items():
        lines.append(f"| {LABELS[m]} | {c['train_seconds']:.0f} | {c['forward']:,} | "
                     f"{c['backward']:,} | {c['generated_tokens']:,} |")
    for m in curves:
        parts = result["cost"][m]["parts_seconds"]
        lines.append(f"\n{LABELS[m]} parts (s): " + ", ".join(f"{k} {v:.0f}"
                                                            for k, v in parts.items()))
    print("\n".join(lines))


def _plot(curves: dict[str, list[dict]], thresholds: dict[str, float], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for j, (m, curve) in enumerate(curves.items()):
        steps = [c["step"] for c in curve]
        color = f"C{j}"
        axes[0].plot(steps, [c["lagrange/lambda"] for c in curve], color=color, label=LABELS[m])
        axes[1].plot(steps, [c["lagrange/episode_cost"] for c in curve], color=color)
        axes[2].plot(steps, [c["reward/mean"] for c in curve], color=color)
        axes[1].axhline(thresholds[m], color=color, linestyle=":", linewidth=1)
    for ax, title in zip(axes, ("lambda", "episode cost (window; dotted: threshold)",
                                "rollout reward (mean)")):
        ax.set_xlabel("PPO step")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle("Safe RLHF on SmolLM2-135M (LoRA), make real's pairs "
                 "(2 cores, Xeon AVX512-BF16)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
