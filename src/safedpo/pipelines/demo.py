"""``safedpo demo``: the whole pipeline on the synthetic safety world, on a CPU, in about a
minute, through the same code paths as a real run.

1. The world (``safedpo.world``) writes PKU-SafeRLHF-schema data: data/sft.jsonl,
   data/train.jsonl + train.parquet, data/test.jsonl, data/eval_prompts.jsonl.
2. A word-level tokenizer and a tiny Llama are built from scratch (init/).
3. SFT on data/sft.jsonl -> the reference (sft/), which answers harmful prompts unsafely
   about half of the time, as the reference of the paper does.
4. From that reference, with the real engine and the real loader (train.parquet):
   DPO-HELPFUL (dpo_helpful/), DPO-HARMLESS (dpo_harmless/) and SafeDPO (safedpo/).
5. Every policy is evaluated EXACTLY on the held-out prompts: the answer sets are finite, so
   the probability of every answer type, the garbled mass and the distance to the closed-form
   optimum pi* are computed, not sampled. A sampled evaluation (``safedpo.evaluate``: one
   generation per prompt, scored by the oracle) is added under sampled/ as a cross-check.
6. report.md (table, plot, a paragraph of reading), frontier.png and report.json.

Steps 3-4 are a compare plan (``safedpo.pipelines.compare``: stages resolved by ``safedpo.config``,
trained from one reference); the exact evaluation is the demo's own, its report goes through
the one report writer (``safedpo.evaluate.report.save_report``) as sections.
The recipe (configs/demo.yaml, ``--recipe``) was chosen on this world over seeds 0, 1, 2 with
the real engine (scripts/check_demo_seeds.py re-checks it). What was learned:

- AdamW makes every DPO-family run collapse into garbled text (likelihood displacement);
  SGD with momentum, one pass, linear decay to zero and clipping does not.
- The learning rate is the main lever on displacement: at 4e-3 SafeDPO's garbled mass on
  benign prompts reached 14% on one seed; at 3e-3 it stays under 5%; at 2e-3 the policy barely
  moves from the reference on helpfulness.
- Delta trades harmlessness for over-refusal here, because the refusal text is shared by every
  prompt: Delta = 0 / 0.5 / 1 / 10 give about 93-96 / 95-97 / 96-98 / 97-99% harmless and
  3-4 / 7-9 / 13-17 / 19-55% refusals on benign prompts (reference: 16-22%). Delta = 10 asks
  for a log-ratio gap of Delta / beta = 100 nats, never reached, so safe-vs-unsafe pairs keep
  full gradient weight for the whole run and push the shared refusal up everywhere.
  Delta = 0.5 is the default; ``--delta 10`` shows the paper's value.
- RPO (``--rpo-alpha``, an NLL term on the chosen answer) cuts that over-refusal (Delta = 10:
  to 1-10%) and the garbled mass, but it pulls the policy towards the chosen answers of the
  data, refusals included, so it moves AWAY from pi* (TV on harmful prompts 0.5-0.8 instead of
  0.2-0.4) and is off by default.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.utils import logging as hf_logging

from safedpo.config import Layer, read_yaml
from safedpo.evaluate import evaluate
from safedpo.evaluate.metrics import normalize_reward
from safedpo.evaluate.report import (
    PLOT_LINK,
    Frontier,
    Report,
    ReportSection,
    save_report,
    write_report,
)
from safedpo.models.loading import load_trained
from safedpo.models.tiny import save_tiny_model
from safedpo.pipelines.compare import Method, Plan, Stage, run_plan, train_stage
from safedpo.world import World, exact

METHODS = ("dpo_helpful", "dpo_harmless", "safedpo")
POLICIES = ("reference",) + METHODS
# The recipe: configs/demo.yaml of this repository.
RECIPE_FILE = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"

LABELS = {"reference": "reference (SFT)", "dpo_helpful": "DPO-HELPFUL",
          "dpo_harmless": "DPO-HARMLESS", "safedpo": "SafeDPO", "optimum": "pi* (closed form)"}


def load_recipe(path: str | Path = RECIPE_FILE, *, fast: bool = False,
                delta: float | None = None, rpo_alpha: float | None = None) -> dict:
    """The recipe file, with --fast's sections merged in and --delta / --rpo-alpha applied."""
    recipe = read_yaml(path)
    fast_values = recipe.pop("fast", {})
    if fast:
        for section, values in fast_values.items():
            recipe[section].update(values)
    if delta is not None:
        recipe["methods"]["safedpo"]["delta"] = delta
    if rpo_alpha is not None:
        recipe["preference"]["rpo_alpha"] = rpo_alpha
    return recipe


def _say(step: str, text: str) -> None:
    print(f"[demo {step}] {text}", flush=True)


def run_demo(*, seed: int = 0, output_dir: str | Path = "runs/demo", fast: bool = False,
             delta: float | None = None, rpo_alpha: float | None = None,
             sampling: bool = True, threads: int | None = None,
             recipe: str | Path = RECIPE_FILE) -> dict:
    """Run the whole demo; returns the report dict (also written to report.json). A training
    stage stopped by SIGINT/SIGTERM raises KeyboardInterrupt (nothing after it runs)."""
    t_start = time.time()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hf_logging.disable_progress_bar()  # weight loading/saving bars would drown the demo's own
    if threads:
        torch.set_num_threads(threads)
    where = str(recipe)
    recipe = load_recipe(recipe, fast=fast, delta=delta, rpo_alpha=rpo_alpha)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    # 1. data
    t = time.time()
    world = World(seed=seed)
    paths = world.write_dataset(out / "data", **recipe["world"])
    seconds["data"] = time.time() - t
    _say("1/6", f"world seed {seed}: wrote {recipe['world']['n_sft']} SFT examples, "
                f"{recipe['world']['n_pairs']} training pairs (PKU-SafeRLHF schema) to "
                f"{out / 'data'}")

    # 2. tokenizer + tiny model
    t = time.time()
    shutil.rmtree(out / "init", ignore_errors=True)
    init = save_tiny_model(out / "init", world.texts(), seed=seed, **recipe["model"])
    seconds["init"] = time.time() - t
    _say("2/6", f"word-level tokenizer and a tiny Llama ({_count_params(init)} parameters) "
                f"saved to {init}")

    def layers(section: str, values: dict, model: Path, dataset: Path) -> list[Layer]:
        return [Layer(f"{where}: train", recipe["train"]), Layer(f"{where}: {section}", values),
                Layer("set by safedpo demo", {"seed": seed, "model_name_or_path": str(model),
                                              "dataset": str(dataset)})]

    # 3. SFT -> reference
    _say("3/6", "SFT: the reference model")
    stage = Stage("sft", layers("sft", recipe["sft"], init, paths["sft"]), out / "sft",
                  engine="sft")
    summaries = {"reference": train_stage(stage, force=True)[0]}
    reference = out / "sft" / "model"

    # 4. preference runs from the reference: a compare plan without its evaluation
    methods = []
    for i, method in enumerate(METHODS, 1):
        values = {**recipe["preference"], **recipe["methods"][method]}
        _say("4/6", f"{LABELS[method]} ({i}/{len(METHODS)}): loss {values['loss_type']}, "
                    f"view {values['view']}"
                    + (f", Delta {values['delta']}" if values["loss_type"] == "safedpo" else ""))
        methods.append(Method(method, [Stage(method, layers(
            f"preference + methods.{method}", values, reference, paths["train_parquet"]),
            out / method)]))
    plan = Plan(out, methods, evaluation=None, reference=False)
    summaries.update(run_plan(plan, force=True, log=lambda msg: _say("4/6", msg))["methods"])

    # 5. evaluation
    t = time.time()
    _say("5/6", "exact evaluation on the held-out prompts")
    beta = recipe["preference"]["beta"]
    exact_metrics = evaluate_exact(world, {"reference": out / "sft",
                                           **{m: out / m for m in METHODS}}, beta=beta)
    seconds["exact_eval"] = time.time() - t
    sampled = None
    if sampling:
        t = time.time()
        _say("5/6", "sampled evaluation (one generation per prompt, scored by the oracle)")
        sampled = evaluate_sampled(out, paths["eval_prompts"], seed=seed, **recipe["sampled"])
        seconds["sampled_eval"] = time.time() - t

    # 6. report
    report = build_report(exact_metrics, summaries, sampled, recipe=recipe, seed=seed,
                          seconds=seconds, t_start=t_start)
    save_report(demo_report(report, out), out)
    _say("6/6", f"report written to {out / 'report.md'}")
    return report


def _count_params(model_dir: Path) -> str:
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        total = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return f"{total / 1e6:.2f}M"


# ---------------------------------------------------------------------------- evaluation
def evaluate_exact(world, run_dirs: dict[str, Path], *, beta: float) -> dict:
    """Exact metrics of each policy on the world's held-out prompts.

    -> {"optimum": metrics of pi*, name: metrics, ...}; pi* is built from the reference's
    exact answer distribution (``run_dirs["reference"]``), the oracle r and c, and ``beta``.
    """
    prompts = world.prompts("test")
    probs = {}
    for name, run_dir in run_dirs.items():
        model, tokenizer, template = load_trained(run_dir)
        probs[name] = exact.response_probs(model, tokenizer, world, prompts, template)
    rewards, costs = exact.world_arrays(world, prompts)
    target = exact.optimum(probs["reference"], rewards, costs, beta)
    result = {"optimum": exact.summarize(target, world, prompts, target)}
    for name, p in probs.items():
        result[name] = exact.summarize(p, world, prompts, target)
    return result


def evaluate_sampled(out: Path, prompts_path: Path, *, seed: int, max_new_tokens: int,
                     do_sample: bool, batch_size: int) -> dict:
    """``safedpo.evaluate`` on every policy (sampled/NAME/), then its report (sampled/)."""
    dirs = {}
    for name in POLICIES:
        run_dir = out / ("sft" if name == "reference" else name)
        dirs[name] = out / "sampled" / name
        evaluate(str(run_dir), str(prompts_path), dirs[name], scorers=["oracle", "refusal"],
                 max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed,
                 batch_size=batch_size, world_seed=seed, label=name, overwrite=True,
                 progress=False)
    paths = write_report([dirs[n] for n in POLICIES], out / "sampled",
                              reference="reference", helpful="dpo_helpful",
                              title="Sampled check: one generation per held-out prompt")
    rows = {r["label"]: r for r in json.loads(Path(paths["json"]).read_text())["rows"]}
    numbers = {}
    for name in POLICIES:
        m = json.loads((dirs[name] / "metrics.json").read_text())
        garbled = m.get("per_scorer", {}).get("oracle_garbled", {}).get("mean")
        numbers[name] = {"harmless_ratio": _value(m.get("harmless_ratio_on_harmful")),
                         "helpfulness": _value(rows.get(name, {}).get("helpfulness")),
                         "over_refusal": _value(m.get("over_refusal_rate")),
                         "garbled": _value(garbled), "reward": _value(m.get("mean_reward"))}
    return {"report": str(paths["markdown"]), "methods": numbers}


# ---------------------------------------------------------------------------- report
def build_report(exact: dict, summaries: dict, sampled: dict | None, *, recipe: dict,
                 seed: int, seconds: dict, t_start: float) -> dict:
    """The report.json structure: methods.NAME holds the headline numbers of each policy."""
    r_ref = exact["reference"]["reward"]
    r_help = exact["dpo_helpful"]["reward"]

    def helpfulness(reward: float) -> float | None:
        # The paper's normalization (reference = 0, DPO-HELPFUL = 10); undefined when equal.
        return normalize_reward(reward, r_ref, r_help) if abs(r_help - r_ref) > 1e-12 else None

    def entry(name: str) -> dict:
        m = exact[name]
        return {"harmless_ratio": m["harmless_ratio"], "helpfulness": helpfulness(m["reward"]),
                "reward": m["reward"], "over_refusal": m["over_refusal"], "garbled": m["garbled"],
                "tv_to_optimum": m["tv_to_optimum"], "harmful": m["harmful"],
                "benign": m["benign"]}

    methods = {}
    for name in POLICIES:
        d = entry(name)
        s = summaries.get(name, {})
        d["train_seconds"] = float(s.get("train_seconds", 0.0))
        d["train_steps"] = s.get("global_step")
        if sampled is not None:
            d["sampled"] = sampled["methods"][name]
        methods[name] = d
    seconds = dict(seconds)
    seconds["train"] = sum(m["train_seconds"] for m in methods.values())
    return {
        "seed": seed,
        "metrics": "exact probabilities over the finite answer sets of the held-out prompts",
        "beta": recipe["preference"]["beta"],
        "delta": recipe["methods"]["safedpo"]["delta"],
        "rpo_alpha": recipe["preference"].get("rpo_alpha"),
        "methods": methods,
        "optimum": entry("optimum"),
        "recipe": recipe,
        "sampled_report": sampled["report"] if sampled else None,
        "seconds": seconds,
        "seconds_total": time.time() - t_start,
    }


def _value(x):
    return x.get("value") if isinstance(x, dict) else x


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def render_table(report: dict) -> str:
    """The markdown table of report.md (also printed at the end of the demo)."""
    lines = ["| Policy | Harmless ratio | Helpfulness (norm.) | Over-refusal | Garbled | "
             "TV to pi* | Train s |",
             "|---|---|---|---|---|---|---|"]
    rows = [(LABELS[n], report["methods"][n]) for n in POLICIES]
    rows.append((LABELS["optimum"], report["optimum"]))
    for label, m in rows:
        lines.append(f"| {label} | {_pct(m['harmless_ratio'])} | {_num(m['helpfulness'])} | "
                     f"{_pct(m['over_refusal'])} | {_pct(m['garbled'])} | "
                     f"{_num(m['tv_to_optimum'])} | "
                     f"{_num(m.get('train_seconds'), 1) if 'train_seconds' in m else '—'} |")
    return "\n".join(lines)


def reading(report: dict) -> str:
    """One paragraph that reads the table; every comparison is computed, not assumed."""
    m = report["methods"]
    ref, hlp, hrm, safe = (m[n] for n in POLICIES)
    closest = min(METHODS, key=lambda n: m[n]["tv_to_optimum"])
    unsafe = 1.0 - ref["harmless_ratio"] - ref["harmful"]["garbled"]
    moves = "falls" if hlp["harmless_ratio"] < ref["harmless_ratio"] else "moves"
    parts = [
        f"The reference answers {_pct(unsafe)} of held-out harmful prompts unsafely, because "
        "its SFT data does. ",
        f"DPO-HELPFUL follows the labeller, who prefers the detailed answer even when it is "
        f"unsafe: its harmless ratio {moves} to {_pct(hlp['harmless_ratio'])}. ",
        f"DPO-HARMLESS is {_pct(hrm['harmless_ratio'])} harmless and refuses "
        f"{_pct(hrm['over_refusal'])} of benign prompts (helpfulness {_num(hrm['helpfulness'])}). ",
        f"SafeDPO (Delta = {report['delta']:g}) is {_pct(safe['harmless_ratio'])} harmless "
        f"with helpfulness {_num(safe['helpfulness'])} and refuses {_pct(safe['over_refusal'])} "
        f"of benign prompts (reference: {_pct(ref['over_refusal'])}). ",
        f"Measured against the closed-form optimum pi* (beta = {report['beta']:g}), "
        f"{LABELS[closest]} is the closest (total variation {m[closest]['tv_to_optimum']:.2f}; "
        + ", ".join(f"{LABELS[n]} {m[n]['tv_to_optimum']:.2f}" for n in METHODS
                    if n != closest)
        + "). ",
        _garbled_sentence(max(x["garbled"] for x in m.values())),
    ]
    return "".join(parts)


def _garbled_sentence(worst: float) -> str:
    if worst <= 0.10:
        return (f"Garbled mass (text outside the finite answer set) is at most {_pct(worst)} for "
                "every policy, so these numbers are not an artefact of a collapsed model.")
    return (f"Warning: garbled mass reaches {_pct(worst)}: part of some policy's probability "
            "went to text outside the answer set (likelihood displacement); read its numbers "
            "with that in mind.")


def demo_report(report: dict, out: Path) -> Report:
    """What report.md, report.json (``report`` itself, plus the plot's points) and
    frontier.png say: the exact table and its reading, the sampled cross-check, the recipe."""
    m = report["methods"]
    intro = [
        f"Seed {report['seed']}. A tiny Llama trained from scratch on data in the PKU-SafeRLHF "
        "schema, then aligned three ways from the same SFT reference. All numbers are exact "
        "probabilities over the finite answer sets of the held-out prompts (templates never "
        "seen in training): harmless ratio = probability of a safe answer to a harmful prompt "
        "(garbled text is not counted as harmless); helpfulness = expected oracle reward, "
        "normalized as in the paper (reference = 0, DPO-HELPFUL = 10); over-refusal = "
        "probability of the refusal on benign prompts; garbled = probability of any text "
        "outside the answer set; TV to pi* = total variation to the closed-form optimum "
        "pi* ∝ pi_ref · exp(r / beta) · 1[c <= 0].",
        "", PLOT_LINK]
    sections = [ReportSection(None, intro),
                ReportSection("Exact evaluation", [render_table(report), "", reading(report)])]
    if report.get("sampled_report"):
        link = Path(report["sampled_report"]).relative_to(out)
        sections.append(ReportSection("Sampled cross-check", [
            "One generation per held-out prompt, oracle-scored; the oracle counts garbled "
            "text as safe: " + "; ".join(f"{LABELS[n]} {_pct(m[n]['sampled']['harmless_ratio'])}"
                                         " harmless" for n in POLICIES)
            + f". Full table with confidence intervals: [{link}]({link})."]))
    rec = report["recipe"]["preference"]
    sections.append(ReportSection("Recipe", [
        f"SFT with AdamW; preference runs with {rec['optim']} (momentum "
        f"{rec.get('momentum')}), learning rate {rec['learning_rate']:g}, batch "
        f"{rec['per_device_train_batch_size']}, {rec.get('num_train_epochs')} epoch, "
        f"{rec['lr_scheduler_type']} decay, gradient clipping {rec['max_grad_norm']}, beta "
        f"{rec['beta']:g}" + (f", RPO alpha {report['rpo_alpha']:g}" if report['rpo_alpha']
                              else "")
        + f". Total time {report['seconds_total']:.0f} s "
        f"(training {report['seconds']['train']:.0f} s)."]))
    return Report("SafeDPO demo: the synthetic safety world", sections, frontier(report), report)


def frontier(report: dict) -> Frontier:
    """Helpfulness (x) vs harmless ratio (y), one point per policy, pi* as a star."""
    points = [(n, report["methods"][n]) for n in POLICIES] + [("optimum", report["optimum"])]
    # Normalized helpfulness needs DPO-HELPFUL to differ from the reference; else raw reward.
    normalized = all(m["helpfulness"] is not None for _, m in points)
    rows = [{"label": LABELS[n], "helpfulness": m["helpfulness" if normalized else "reward"],
             "harmless_ratio": m["harmless_ratio"], "marker": "*" if n == "optimum" else "o"}
            for n, m in points]
    return Frontier(
        rows, title="Synthetic safety world: helpfulness vs. harmlessness (exact)",
        x_label="Helpfulness (expected reward; reference = 0, DPO-HELPFUL = 10)" if normalized
        else "Expected oracle reward (not normalized: DPO-HELPFUL = reference)",
        y_label="Harmless ratio on harmful prompts (%)")
