#!/usr/bin/env python
"""A small sweep of Safe RLHF (PPO-Lagrangian) on the synthetic world, so that the baseline
next to SafeDPO is a tuned one: cost threshold x lambda learning rate x KL coefficient.

Reads a finished demo (``safedpo demo --output-dir runs/demo``: data, SFT reference, DPO runs,
SafeDPO, report.json) and:

1. trains the reward and cost models ONCE (``safedpo rm`` / ``cm`` exactly as ``safedpo
   saferlhf`` trains them, with ``configs/saferlhf-tiny.yaml``'s ``score_model_overrides``),
   into OUTPUT_DIR/score_models; every run below reuses them (reward_model_path /
   cost_model_path);
2. measures the learned models EXACTLY on the world's training prompts (the prompts PPO
   sees): the expected learned cost and reward of the reference, the demo's DPO runs, SafeDPO
   and pi* (each policy's exact answer distribution, renormalized over the four answer types),
   so the thresholds are set on the cost model's own scale: a threshold is a fraction f of the
   way from the reference's expected learned cost (f = 0) to pi*'s (f = 1);
3. runs Safe RLHF for every (f, lambda_lr, kl_coef) of the grid (at most 12 runs, 30 rollouts
   each as configs/saferlhf-tiny.yaml, lambda from --lambda-init, logged at every step), then
   one run with the world's oracle as reward and cost model at the best setting (its threshold
   the same fraction f, in the oracle's units), then both again with --long-steps rollouts;
4. evaluates every policy exactly on the held-out prompts, in the demo's terms
   (``scripts/saferlhf_cost.py``'s ``exact_rows``: harmless ratio, helpfulness with reference 0
   and DPO-HELPFUL 10, over-refusal, TV to pi*), picks the best grid run by a fixed rule (the
   highest helpfulness among the runs at least as harmless as the reference; if none is, the
   most harmless), and writes the results (settings, exact metrics, the lambda / episode-cost
   trajectories of each run's metrics.jsonl) to --json and the trajectories to --plot.

Time: about 45 s for the score models and the probe, 15-25 s per 30-rollout PPO run and about
a minute per 90-rollout run on one CPU thread (tiny model): about 7 minutes for the default
12 + 1 + 2 runs. --reuse keeps the score models and runs already finished under --output-dir.

    python scripts/saferlhf_sweep.py --demo-dir runs/demo --output-dir runs/saferlhf-sweep

The pilot grid of docs/saferlhf.md (lambda from the config's 1.0, lambda_lr 0.1 and 1):

    python scripts/saferlhf_sweep.py --output-dir runs/saferlhf-sweep-pilot --lambda-init 1 \
        --fractions 0.25 0.5 1 --lambda-lrs 0.1 1 --long-steps 0 \
        --json docs/saferlhf_sweep_pilot.json --plot docs/saferlhf-lambda-pilot.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
from saferlhf_cost import DPO_RUNS, cpu_model, exact_rows, run_saferlhf

from safedpo.config import SafeRLHFConfig, load_config
from safedpo.evaluate.scorers import load_model_scorer
from safedpo.pipelines.demo import load_trained
from safedpo.train.ppo_lagrangian import _score_models
from safedpo.world import World, exact

TRAJECTORY_KEYS = ("lagrange/lambda", "lagrange/episode_cost", "cost/mean", "reward/mean", "kl")


def score_models(config: str, demo: Path, out: Path, seed: int, reuse: bool) -> tuple[dict, dict]:
    """The reward and cost models, trained as ``safedpo saferlhf`` trains them; -> (model dirs,
    their train summaries)."""
    cfg = load_config(config, cls=SafeRLHFConfig, model_name_or_path=str(demo / "sft"),
                      dataset=str(demo / "data" / "train.jsonl"), output_dir=str(out), seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    return _score_models(cfg, out, resuming=reuse)


def probe(demo: Path, models: dict, seed: int, beta: float, prompt_template) -> dict:
    """Exact expected learned (and oracle) reward and cost of the reference, the demo's runs and
    pi* on the world's training prompts, and the learned cost of each answer type."""
    world = World(seed)
    prompts = world.prompts("train")
    responses = [world.responses(p.text) for p in prompts]
    flat_prompts = [p.text for p, rs in zip(prompts, responses) for _ in rs]
    flat_texts = [r.text for rs in responses for r in rs]
    learned = {}
    for kind in ("reward", "cost"):
        scorer = load_model_scorer(models[kind], kind, batch_size=64, device="cpu",
                                   prompt_template=prompt_template, progress=False)
        learned[kind] = np.asarray(scorer.score(flat_prompts, flat_texts),
                                   dtype=float).reshape(len(prompts), -1)
    oracle_r, oracle_c = exact.world_arrays(world, prompts)
    probs = {}
    for name in ("reference", *DPO_RUNS):
        model, tokenizer, template = load_trained(demo / ("sft" if name == "reference" else name))
        p = exact.response_probs(model, tokenizer, world, prompts, template)
        probs[name] = p / p.sum(-1, keepdims=True)
    probs["optimum"] = exact.optimum(probs["reference"], oracle_r, oracle_c, beta)

    def mean(p, scores):
        return float((p * scores).sum(-1).mean())

    expected = {name: {"learned_cost": mean(p, learned["cost"]),
                       "learned_reward": mean(p, learned["reward"]),
                       "oracle_cost": mean(p, oracle_c), "oracle_reward": mean(p, oracle_r)}
                for name, p in probs.items()}
    harmful = np.array([p.harmful for p in prompts])
    per_type = {}
    for label, rows in (("harmful", harmful), ("benign", ~harmful)):
        names = [r.name for r in responses[int(np.flatnonzero(rows)[0])]]
        per_type[label] = {n: {"learned_cost": float(learned["cost"][rows, k].mean()),
                               "learned_reward": float(learned["reward"][rows, k].mean()),
                               "oracle_cost": float(oracle_c[rows, k].mean()),
                               "oracle_reward": float(oracle_r[rows, k].mean())}
                           for k, n in enumerate(names)}
    return {"prompts": len(prompts), "harmful_prompts": int(harmful.sum()),
            "expected": expected, "per_type": per_type}


def threshold(fraction: float, expected: dict, unit: str) -> float:
    """fraction f of the way from the reference's expected cost (f = 0) to pi*'s (f = 1)."""
    ref, opt = expected["reference"][unit], expected["optimum"][unit]
    return ref + fraction * (opt - ref)


def trajectory(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    rows = [r for r in rows if "lagrange/lambda" in r]
    return {"step": [r["step"] for r in rows],
            **{k: [r.get(k) for r in rows] for k in TRAJECTORY_KEYS}}


def pick_best(runs: dict, reference: dict) -> tuple[str, str]:
    """-> (name, why): the highest helpfulness among runs at least as harmless as the
    reference; if there is none, the most harmless run."""
    safe = [n for n, r in runs.items()
            if r["exact"]["harmless_ratio"] >= reference["harmless_ratio"]]
    if safe:
        return (max(safe, key=lambda n: runs[n]["exact"]["helpfulness"]),
                "highest helpfulness among the runs at least as harmless as the reference")
    return (max(runs, key=lambda n: runs[n]["exact"]["harmless_ratio"]),
            "no run is as harmless as the reference: the most harmless run")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]

    def column(r):  # the grid's runs by threshold, then the longer run, then the oracle's
        return "oracle" if r["oracle"] else "long" if r["settings"].get("max_steps") else \
            r["settings"]["threshold_fraction"]

    kinds = {column(r) for r in runs.values()}
    columns = sorted(k for k in kinds if not isinstance(k, str)) + [
        k for k in ("long", "oracle") if k in kinds]
    fig, axes = plt.subplots(2, len(columns), figsize=(4.2 * len(columns), 6.4),
                             squeeze=False)
    styles = {}
    for j, col in enumerate(columns):
        top, bottom = axes[0][j], axes[1][j]
        for name, r in runs.items():
            s = r["settings"]
            if column(r) != col:
                continue
            color = "k" if s.get("max_steps") else styles.setdefault(s["lambda_lr"],
                                                                      f"C{len(styles)}")
            dash = "-" if s["kl_coef"] == max(r["settings"]["kl_coef"]
                                              for r in runs.values()) else "--"
            t = r["trajectory"]
            label = f"lambda_lr {s['lambda_lr']:g}, kl {s['kl_coef']:g}" + (
                " (best)" if name == result["best"]["run"] else "") + (
                f", {s['max_steps']} steps" if s.get("max_steps") else "")
            width = 2.4 if name == result["best"]["run"] or r["oracle"] else 1.2
            top.plot(t["step"], t["lagrange/lambda"], color=color, ls=dash, lw=width,
                     label=label)
            bottom.plot(t["step"], t["lagrange/episode_cost"], color=color, ls=dash, lw=width)
            bottom.axhline(s["cost_threshold"], color="k", ls=":", lw=1)
        unit = "oracle cost" if col == "oracle" else "learned cost"
        oracle = [r["settings"] for r in runs.values() if r["oracle"]]
        title = (f"oracle reward/cost models, f = {oracle[0]['threshold_fraction']:g}"
                 if col == "oracle" else "learned models, the best setting, longer"
                 if col == "long" else f"learned models, threshold f = {col:g}")
        top.set_title(title, fontsize=9)
        top.set_ylabel("lambda")
        bottom.set_ylabel(f"episode cost (window mean, {unit})")
        bottom.set_xlabel("rollout step")
        top.legend(fontsize=7)
    fig.suptitle("Safe RLHF sweep on the synthetic world: lambda and the cost it follows "
                 "(dotted: the threshold; dashed lines: the smaller kl_coef)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default="runs/demo")
    parser.add_argument("--output-dir", default="runs/saferlhf-sweep")
    parser.add_argument("--config", default="configs/saferlhf-tiny.yaml")
    parser.add_argument("--seed", type=int, default=0, help="the demo's world seed")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the score models and runs already finished under --output-dir")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.75, 1.0],
                        help="cost thresholds, as fractions of the way from the reference's "
                             "expected learned cost (0) to pi*'s (1)")
    parser.add_argument("--lambda-lrs", type=float, nargs="+", default=[0.02, 0.1],
                        help="lambda's step per unit of violation (SafeRLHFConfig's default 0.1; "
                             "configs/saferlhf-tiny.yaml's 1.0 overshoots, see the pilot in "
                             "docs/saferlhf.md)")
    parser.add_argument("--kl-coefs", type=float, nargs="+", default=[0.1, 0.01],
                        help="the demo's beta (pi*'s), and safe-rlhf ppo-lag.sh's kl_coeff 0.02 "
                             "in this engine's units (k / 2)")
    parser.add_argument("--lambda-init", type=float, default=0.0,
                        help="lambda's start (configs/saferlhf-tiny.yaml: 1.0, which with "
                             "this cost model's scale already favours refusing benign prompts)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="rollouts per run; None = the config's")
    parser.add_argument("--long-steps", type=int, default=90,
                        help="also run the best setting (and the oracle's run) for this many "
                             "rollouts, to see where lambda goes; 0 = skip")
    parser.add_argument("--no-oracle", action="store_true",
                        help="skip the oracle-score-model run at the best setting")
    parser.add_argument("--probe-only", action="store_true",
                        help="train the score models, print the probe and stop")
    parser.add_argument("--json", default="docs/saferlhf_sweep.json")
    parser.add_argument("--plot", default="docs/saferlhf-lambda.png")
    args = parser.parse_args()
    t0 = time.time()
    demo, out = Path(args.demo_dir), Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = json.loads((demo / "report.json").read_text())
    cfg = load_config(args.config, cls=SafeRLHFConfig)
    load_start = os.getloadavg()
    grid = list(itertools.product(args.fractions, args.lambda_lrs, args.kl_coefs))
    if len(grid) > 12:
        parser.error(f"{len(grid)} runs: the sweep is at most 12")

    models, summaries = score_models(args.config, demo, out / "score_models", args.seed,
                                     args.reuse)
    found = probe(demo, models, args.seed, report["beta"], cfg.prompt_template)
    print(json.dumps(found, indent=1))
    if args.probe_only:
        return 0

    common = {"reward_model_path": models["reward"], "cost_model_path": models["cost"],
              "logging_steps": 1}
    if args.max_steps is not None:
        common["max_steps"] = args.max_steps
    runs = {}

    def run(name: str, settings: dict, oracle: bool) -> None:
        start = time.time()
        overrides = {**common, **{k: settings[k] for k in ("cost_threshold", "lambda_lr",
                                                           "kl_coef", "lambda_init",
                                                           "max_steps") if k in settings}}
        if oracle:
            overrides |= {"reward_model_path": "oracle", "cost_model_path": "oracle"}
        reused = args.reuse and (out / name / "train_summary.json").is_file()
        summary = run_saferlhf(args.config, demo, out / name, seed=args.seed, reuse=args.reuse,
                               **overrides)
        runs[name] = {"settings": settings, "oracle": oracle, "reused": reused,
                      "wall_seconds": None if reused else time.time() - start,
                      "ppo_seconds": summary["ppo_seconds"], "steps": summary["global_step"],
                      "final_lambda": summary["lagrange"],
                      "trajectory": trajectory(out / name)}
        print(f"[sweep] {name}: lambda {summary['lagrange']:.3f} "
              f"({time.time() - start:.0f} s)", flush=True)

    init = args.lambda_init
    for f, lr, kl in grid:
        run(f"f{f:g}_lr{lr:g}_kl{kl:g}_init{init:g}",
            {"threshold_fraction": f, "cost_threshold": threshold(f, found["expected"],
                                                                  "learned_cost"),
             "lambda_lr": lr, "kl_coef": kl, "lambda_init": init}, oracle=False)
    rows = exact_rows(demo, {n: out / n for n in runs}, args.seed)
    for name in runs:
        runs[name]["exact"] = rows[name]
    best, why = pick_best(runs, rows["reference"])
    if not args.no_oracle:
        s = runs[best]["settings"]
        name = f"oracle_{best}"
        run(name, {**s, "cost_threshold": threshold(s["threshold_fraction"],
                                                     found["expected"], "oracle_cost")},
            oracle=True)
        runs[name]["exact"] = exact_rows(demo, {name: out / name}, args.seed)[name]
    if args.long_steps:
        longer = {f"{best}_steps{args.long_steps}": False}
        if not args.no_oracle:
            longer[f"oracle_{best}_steps{args.long_steps}"] = True
        for name, oracle in longer.items():
            s = runs[f"oracle_{best}" if oracle else best]["settings"]
            run(name, {**s, "max_steps": args.long_steps}, oracle=oracle)
        for name, m in exact_rows(demo, {n: out / n for n in longer}, args.seed).items():
            if name in longer:
                runs[name]["exact"] = m

    for r in runs.values():
        t = r["trajectory"]
        d = r["settings"]["cost_threshold"]
        r["binds"] = {"final_lambda_positive": r["final_lambda"] > 0,
                      "steps_lambda_positive": sum(v > 0 for v in t["lagrange/lambda"]),
                      "episode_cost_reached_threshold": any(
                          v <= d for v in t["lagrange/episode_cost"]),
                      "final_episode_cost": t["lagrange/episode_cost"][-1]}
    result = {
        "what": "Safe RLHF sweep on the synthetic world (scripts/saferlhf_sweep.py); exact "
                "metrics on the held-out prompts in the demo's terms",
        "machine": cpu_model(), "threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "wall_seconds": time.time() - t0, "config": args.config, "demo": str(demo),
        "max_steps": args.max_steps or cfg.max_steps,
        "score_models": {k: {"path": models[k], "train_seconds": v["train_seconds"],
                             "global_step": v["global_step"]} for k, v in summaries.items()},
        "probe": found,
        "threshold_rule": "cost_threshold = E_ref[c] + f (E_pi*[c] - E_ref[c]) on the training "
                          "prompts, in the cost model's units (the oracle run: the oracle's)",
        "best": {"run": best, "rule": why},
        "demo_rows": {n: rows[n] for n in ("reference", *DPO_RUNS, "optimum")},
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    plot(result, Path(args.plot))

    lines = ["| Run | f | threshold | lambda_lr | kl_coef | final lambda | final episode cost | "
             "Harmless | Helpfulness | Over-refusal | TV to pi* |", "|---" * 11 + "|"]
    for name, m in {**{n: {"exact": rows[n]} for n in ("reference", *DPO_RUNS)},
                    **runs, "optimum": {"exact": rows["optimum"]}}.items():
        e, s = m["exact"], m.get("settings")
        cells = (f"{s['threshold_fraction']:g} | {s['cost_threshold']:.2f} | "
                 f"{s['lambda_lr']:g} | {s['kl_coef']:g} | {m['final_lambda']:.2f} | "
                 f"{m['binds']['final_episode_cost']:.2f}") if s else "— | — | — | — | — | —"
        lines.append(f"| {name}{' (best)' if name == best else ''} | {cells} | "
                     f"{100 * e['harmless_ratio']:.1f}% | {e['helpfulness']:.2f} | "
                     f"{100 * e['over_refusal']:.1f}% | {e['tv_to_optimum']:.2f} |")
    print("\n".join(lines))
    print(f"\nbest: {best} ({why}); machine: {result['machine']}; wall "
          f"{result['wall_seconds']:.0f} s; load {load_start[0]:.2f} -> "
          f"{result['loadavg_end'][0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
