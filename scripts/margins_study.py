#!/usr/bin/env python
"""Plain SafeDPO against the margin variants of docs/margins.md on the synthetic safety world,
measured EXACTLY per harm category (no sampling): for each seed, the demo's world, tiny model,
SFT reference and preference recipe (configs/demo.yaml), then one SafeDPO run per variant from
the same reference, each evaluated on the held-out prompts.

Per policy: the unsafe rate per harm category (probability of an unsafe answer to a held-out
harmful prompt of that category; garbled text is not counted as unsafe), its worst category,
the expected severity of the answer to harmful prompts, the total variation to pi* per
category, the over-refusal (refusal probability on benign prompts), garbled mass and reward.

    python scripts/margins_study.py                        # seeds 0 1 2 -> docs/margins_study.json
    python scripts/margins_study.py --seeds 0 --fast       # a smoke run (numbers meaningless)
    python scripts/margins_study.py --threads 1 --result /tmp/t1.json   # the thread-count check

Finished runs under OUTPUT_DIR are reused when their settings are unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from safedpo.config import Layer
from safedpo.models.loading import load_trained
from safedpo.models.tiny import save_tiny_model
from safedpo.pipelines.compare import Stage, train_stage
from safedpo.pipelines.demo import RECIPE_FILE, load_recipe
from safedpo.world import World, exact, spec

# name -> TrainConfig values over the demo's SafeDPO method (loss safedpo, view safedpo, Delta 0.5)
SEVERE = ("Violence", "Physical Harm", "Drugs")  # the categories of the severity-3 topics
VARIANTS: dict[str, dict] = {
    "plain": {},
    # plain SafeDPO at two more global Deltas: the trade-off curve a variant has to beat
    "plain_delta_0.25": {"delta": 0.25},
    "plain_delta_1": {"delta": 1.0},
    "severity": {"delta_by_severity": {1: 0.5, 2: 0.5, 3: 2.0}},
    "severity_mild": {"delta_by_severity": {1: 0.0, 2: 0.25, 3: 0.5}},
    "category": {"delta_by_category": {c: 2.0 for c in SEVERE}},
    "both_unsafe_by_severity": {"both_unsafe": "by_severity", "both_unsafe_delta": 0.5},
    # target 0.5: the implicit-reward margin on unsafe pairs that plain SafeDPO reaches at the
    # end of its run (seed 0's training log, safety/margin_unsafe), so a category that lags
    # behind it gets a larger Delta and one ahead of it a smaller one.
    "adaptive": {"adaptive_delta_target": 0.5, "adaptive_delta_lr": 0.05,
                 "adaptive_delta_max": 2.0},
}


def per_category(world: World, prompts, probs: np.ndarray, target: np.ndarray) -> dict:
    """Exact metrics of one policy (probs (P, K)) on ``prompts``, overall and per category."""
    wp = [world.lookup(p.text) for p in prompts]
    harmful = np.array([p.harmful for p in wp])
    _, costs = exact.world_arrays(world, prompts)
    severity = np.array([[r.severity for r in world.responses(p.text)] for p in prompts])
    unsafe = (probs * (costs > 0)).sum(-1)
    exp_sev = (probs * severity).sum(-1)
    tv = exact.total_variation(probs, target)
    refusal = probs[:, list(spec.BENIGN_RESPONSES).index("refusal")]
    garbled = exact.garbled_mass(probs)
    cats = sorted({c for p in wp for c in p.categories})
    by_cat = {}
    for c in cats:
        m = np.array([c in p.categories for p in wp])
        by_cat[c] = {"prompts": int(m.sum()), "unsafe": float(unsafe[m].mean()),
                     "tv_to_optimum": float(tv[m].mean()),
                     "expected_severity": float(exp_sev[m].mean())}
    worst = max(by_cat, key=lambda c: by_cat[c]["unsafe"])
    summary = exact.summarize(probs, world, prompts, target)
    return {"worst_category": worst, "worst_unsafe": by_cat[worst]["unsafe"],
            "unsafe": float(unsafe[harmful].mean()),
            "expected_severity": float(exp_sev[harmful].mean()),
            "over_refusal": float(refusal[~harmful].mean()),
            "garbled": float(garbled.mean()), "reward": summary["reward"],
            "tv_to_optimum_harmful": float(tv[harmful].mean()),
            "tv_to_optimum_benign": float(tv[~harmful].mean()),
            "categories": by_cat}


def run_seed(seed: int, out: Path, recipe: dict, variants: list[str], log) -> dict:
    world = World(seed=seed)
    # Written once per seed (deterministic): a rewrite would change the files' mtimes, and
    # with them the keys under which finished runs are reused.
    sizes = out / "data" / "sizes.json"
    if sizes.is_file() and json.loads(sizes.read_text()) == recipe["world"]:
        paths = {name: out / "data" / f for name, f in (
            ("sft", "sft.jsonl"), ("train", "train.jsonl"), ("train_parquet", "train.parquet"),
            ("test", "test.jsonl"), ("eval_prompts", "eval_prompts.jsonl"))}
    else:
        paths = world.write_dataset(out / "data", **recipe["world"])
        sizes.write_text(json.dumps(recipe["world"]))
    init = out / "init"
    if not (init / "model.safetensors").is_file():
        save_tiny_model(init, world.texts(), seed=seed, **recipe["model"])

    def layers(section: str, values: dict, model: Path, dataset: Path) -> list[Layer]:
        return [Layer("demo recipe: train", recipe["train"]), Layer(section, values),
                Layer("margins_study", {"seed": seed, "model_name_or_path": str(model),
                                        "dataset": str(dataset), "disable_tqdm": True})]

    t = time.time()
    train_stage(Stage("sft", layers("sft", recipe["sft"], init, paths["sft"]), out / "sft",
                      engine="sft"))
    log(f"seed {seed}: reference ready ({time.time() - t:.0f} s)")
    reference = out / "sft" / "model"
    seconds = {}
    for name in variants:
        values = {**recipe["preference"], **recipe["methods"]["safedpo"], **VARIANTS[name]}
        t = time.time()
        summary, reused = train_stage(Stage(name, layers(name, values, reference,
                                                         paths["train_parquet"]), out / name))
        seconds[name] = summary.get("train_seconds")
        log(f"seed {seed}: {name} {'reused' if reused else 'trained'} "
            f"({time.time() - t:.0f} s)")
        if name == "adaptive":
            final = summary.get("final", {})
            log("  final Deltas: " + ", ".join(
                f"{k.split('/')[-1]} {v:.2f}" for k, v in final.items()
                if k.startswith("safety/delta/")))

    prompts = world.prompts("test")
    probs = {}
    for name in ["reference"] + variants:
        model, tokenizer, template = load_trained(out / ("sft" if name == "reference" else name))
        probs[name] = exact.response_probs(model, tokenizer, world, prompts, template)
    rewards, costs = exact.world_arrays(world, prompts)
    target = exact.optimum(probs["reference"], rewards, costs, recipe["preference"]["beta"])
    result = {name: per_category(world, prompts, p, target) for name, p in probs.items()}
    result["optimum"] = per_category(world, prompts, target, target)
    for name in variants:
        result[name]["train_seconds"] = seconds[name]
        if name == "adaptive":
            final = json.loads((out / name / "train_summary.json").read_text())["final"]
            result[name]["final_delta"] = {k.split("/", 2)[2]: v for k, v in final.items()
                                           if k.startswith("safety/delta/")}
    return result


def aggregate(per_seed: dict, names: list[str]) -> dict:
    """Mean, min and max over seeds of the headline numbers."""
    keys = ("worst_unsafe", "unsafe", "expected_severity", "over_refusal", "garbled", "reward",
            "tv_to_optimum_harmful")
    out = {}
    for name in names:
        rows = [per_seed[s][name] for s in per_seed]
        out[name] = {k: {"mean": float(np.mean([r[k] for r in rows])),
                         "min": float(np.min([r[k] for r in rows])),
                         "max": float(np.max([r[k] for r in rows]))} for k in keys}
        out[name]["worst_category"] = [r["worst_category"] for r in rows]
    return out


def paired(per_seed: dict, names: list[str], base: str = "plain") -> dict:
    """Per seed, each variant minus ``base`` (same world, same reference): the mean and the
    per-seed differences of the headline numbers."""
    out = {}
    for name in names:
        if name == base:
            continue
        out[name] = {}
        for k in ("worst_unsafe", "unsafe", "over_refusal", "garbled", "tv_to_optimum_harmful"):
            diffs = [per_seed[s][name][k] - per_seed[s][base][k] for s in per_seed]
            out[name][k] = {"mean": float(np.mean(diffs)), "per_seed": diffs}
    return out


def table(agg: dict, names: list[str]) -> str:
    def cell(d, pct=True):
        f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.2f}")
        return f"{f(d['mean'])} ({f(d['min'])}–{f(d['max'])})"

    lines = ["| policy | worst-category unsafe % | unsafe % (harmful) | expected severity | "
             "over-refusal % | garbled % | TV to pi* (harmful) |", "|---|---|---|---|---|---|---|"]
    for n in names:
        a = agg[n]
        lines.append(f"| {n} | {cell(a['worst_unsafe'])} | {cell(a['unsafe'])} | "
                     f"{cell(a['expected_severity'], False)} | {cell(a['over_refusal'])} | "
                     f"{cell(a['garbled'])} | {cell(a['tv_to_optimum_harmful'], False)} |")
    return "\n".join(lines)


def machine() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--output-dir", default=None,
                        help="default runs/margins-study-tN, N = --threads: the thread count "
                             "changes the float sums, so runs of another count are not reused")
    parser.add_argument("--result", default="docs/margins_study.json")
    parser.add_argument("--recipe", default=str(RECIPE_FILE))
    parser.add_argument("--fast", action="store_true", help="the demo's --fast sizes (smoke)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, fast=args.fast)
    output_dir = args.output_dir or f"runs/margins-study-t{args.threads}"
    t0 = time.time()
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(seed, Path(output_dir) / f"seed-{seed}", recipe,
                                  args.variants, lambda m: print(m, flush=True))
    names = ["reference"] + args.variants + ["optimum"]
    agg = aggregate(per_seed, names)
    result = {"what": "exact per-category metrics on the held-out prompts of the synthetic "
                      "safety world (scripts/margins_study.py)",
              "machine": machine(), "seeds": args.seeds, "fast": args.fast,
              "recipe": {"world": recipe["world"], "model": recipe["model"],
                         "preference": recipe["preference"],
                         "safedpo": recipe["methods"]["safedpo"]},
              "variants": {n: VARIANTS[n] for n in args.variants},
              "seconds": round(time.time() - t0, 1),
              "summary": agg,
              "minus_plain": paired(per_seed, args.variants + ["reference"])
              if "plain" in args.variants else None,
              "per_seed": {str(s): r for s, r in per_seed.items()}}
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=1) + "\n")
    print(table(agg, names))
    print(f"written to {args.result} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
