#!/usr/bin/env python
"""Safe RLHF (PPO-Lagrangian) next to SafeDPO and the DPO baselines on the synthetic world,
with what each method cost: the README's "Safe RLHF (PPO-Lagrangian) and the cost of each
method" table.

Reads a finished demo (``safedpo demo --output-dir runs/demo``: the data, the SFT reference and
the DPO-HELPFUL / DPO-HARMLESS / SafeDPO runs), trains Safe RLHF from the same reference on the
same pairs (its reward and cost models first, ``configs/saferlhf-tiny.yaml``), then evaluates
every policy EXACTLY on the held-out prompts (``safedpo.pipelines.demo.evaluate_exact``). A second Safe
RLHF run with the world's oracle as reward and cost model separates the RL from the errors of
the learned score models.

Cost per method, training only (the SFT reference is shared and not counted):
- seconds: each run's ``train_seconds`` (Safe RLHF: reward model + cost model + PPO);
- forward / backward passes, in sequences through a model: a DPO step is one forward and one
  backward over 2 x batch rows, plus one forward over the 2 x N pairs for the cached reference
  log-probs; a reward/cost model step is 2 x batch rows each way; a PPO step generates one
  answer per prompt (counted in generated tokens, one forward each) and runs the policy, the
  reference and the two critics over every answer (the oracle scorers here are not models),
  then num_ppo_epochs forward+backward passes of the policy and the two critics.

    python scripts/saferlhf_cost.py --demo-dir runs/demo --output-dir runs/saferlhf-cost
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path

import yaml

from safedpo.config import SafeRLHFConfig, load_config
from safedpo.pipelines.demo import evaluate_exact
from safedpo.train.ppo_lagrangian import train
from safedpo.world import World

DPO_RUNS = {"dpo_helpful": "DPO-HELPFUL", "dpo_harmless": "DPO-HARMLESS", "safedpo": "SafeDPO"}
SAFERLHF_RUNS = {"saferlhf": {},
                 "saferlhf_oracle": {"reward_model_path": "oracle", "cost_model_path": "oracle"}}


def dpo_passes(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "train_summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    rows = 2 * summary["global_step"] * config["per_device_train_batch_size"]
    ref = 2 * summary["num_examples"] if config["precompute_ref_log_probs"] else rows
    return {"train_seconds": summary["train_seconds"], "steps": summary["global_step"],
            "forward": rows + ref, "backward": rows, "generated_tokens": 0}


def run_saferlhf(config: str, demo: Path, run_dir: Path, *, seed: int, reuse: bool,
                 **overrides) -> dict:
    """Safe RLHF from the demo's reference on the demo's pairs (``config`` then ``overrides``)
    into ``run_dir``; -> its train summary (a finished one is kept when ``reuse``)."""
    done = run_dir / "train_summary.json"
    if reuse and done.is_file():
        return json.loads(done.read_text())
    return train(load_config(config, cls=SafeRLHFConfig, model_name_or_path=str(demo / "sft"),
                             dataset=str(demo / "data" / "train.jsonl"),
                             output_dir=str(run_dir), overwrite_output_dir=True, seed=seed,
                             **overrides))


def exact_rows(demo: Path, runs: dict[str, Path], seed: int) -> dict:
    """The demo's exact metrics on the held-out prompts (``evaluate_exact``) of the reference,
    the demo's DPO runs, ``runs`` and pi*: harmless ratio, helpfulness (reference 0,
    DPO-HELPFUL 10), TV to pi*, garbled mass, over-refusal."""
    report = json.loads((demo / "report.json").read_text())
    dirs = {"reference": demo / "sft", **{name: demo / name for name in DPO_RUNS}, **runs}
    exact = evaluate_exact(World(seed), dirs, beta=report["beta"])
    r_ref, r_help = exact["reference"]["reward"], exact["dpo_helpful"]["reward"]
    return {name: {"harmless_ratio": exact[name]["harmless_ratio"],
                   "helpfulness": 10 * (exact[name]["reward"] - r_ref) / (r_help - r_ref),
                   "tv_to_optimum": exact[name]["tv_to_optimum"],
                   "garbled": exact[name]["garbled"], "over_refusal": exact[name]["over_refusal"]}
            for name in (*dirs, "optimum")}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default="runs/demo")
    parser.add_argument("--output-dir", default="runs/saferlhf-cost")
    parser.add_argument("--config", default="configs/saferlhf-tiny.yaml")
    parser.add_argument("--seed", type=int, default=0, help="the demo's world seed")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the Safe RLHF runs already finished under --output-dir")
    args = parser.parse_args()
    demo, out = Path(args.demo_dir), Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    costs = {name: dpo_passes(demo / name) for name in DPO_RUNS}
    # The learned reward/cost models, and the oracle's (perfect score models: what is left
    # is the distance PPO-Lagrangian itself keeps from pi*).
    for name, models in SAFERLHF_RUNS.items():
        summary = run_saferlhf(args.config, demo, out / name, seed=args.seed, reuse=args.reuse,
                               **models)
        costs[name] = {"train_seconds": summary["train_seconds"],
                       "steps": summary["global_step"], **summary["passes"],
                       "parts_seconds": {"ppo": summary["ppo_seconds"], **{
                           k: v["train_seconds"] for k, v in summary["score_models"].items()}}}
    rows = exact_rows(demo, {name: out / name for name in SAFERLHF_RUNS}, args.seed)
    rows = {name: {**m, **costs.get(name, {})} for name, m in rows.items()}
    result = {"machine": cpu_model(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
              "config": args.config, "demo": str(demo), "methods": rows}
    (out / "cost.json").write_text(json.dumps(result, indent=2) + "\n")
    labels = {"reference": "reference (SFT)", **DPO_RUNS, "saferlhf": "Safe RLHF (PPO-Lag.)",
              "saferlhf_oracle": "Safe RLHF, oracle reward/cost", "optimum": "pi* (closed form)"}
    lines = ["| Method | Harmless ratio | Helpfulness | TV to pi* | Garbled | Train s | "
             "Forward passes | Backward passes | Generated tokens |", "|---" * 9 + "|"]
    for name, m in rows.items():
        cost = (f"{m['train_seconds']:.1f} | {m['forward']:,} | {m['backward']:,} | "
                f"{m['generated_tokens']:,}") if "forward" in m else "— | — | — | —"
        lines.append(f"| {labels[name]} | {100 * m['harmless_ratio']:.1f}% | "
                     f"{m['helpfulness']:.2f} | {m['tv_to_optimum']:.2f} | "
                     f"{100 * m['garbled']:.1f}% | {cost} |")
    print("\n".join(lines))
    print(f"\nmachine: {result['machine']}; load average {load_start[0]:.2f} -> "
          f"{result['loadavg_end'][0]:.2f}; Safe RLHF parts (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in costs["saferlhf"]["parts_seconds"].items()))
    print("Safe RLHF runs: " + "; ".join(
        f"{n}: {json.dumps(json.loads((out / n / 'metrics.jsonl').read_text().splitlines()[-1]))}"
        for n in SAFERLHF_RUNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
