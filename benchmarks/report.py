"""Turn worker results into figures, checks and a table. Pure functions of plain data."""

from __future__ import annotations

import statistics

MIB = 1024 * 1024

# (numerator arm, denominator arm, what it is, target or None, kind, like for like): kind
# "speed" compares tokens/s (ratio of medians >= target), "rss" peak RSS (<= target), "par"
# tokens/s within a tolerance (target = 0.02: within 2%), judged on the median of the paired
# per-repetition ratios (PAR_MIN_REPS+).
# A like-for-like row is judged only when both arms really ran at the same precision.
RATIOS = [
    ("ours_dpo_bf16", "trl_default", "tokens/s vs TRL defaults, same precision", 1.5, "speed",
     True),
    ("ours_dpo", "trl_default", "tokens/s, ours without bf16 vs TRL defaults", None, "speed",
     False),
    ("ours_dpo", "trl_same", "tokens/s vs TRL, same settings", 1.2, "speed", True),
    ("ours_dpo_pre", "trl_same_pre", "tokens/s, both precomputing ref log-probs", None,
     "speed", True),
    ("ours_safedpo", "ours_dpo", "SafeDPO vs DPO tokens/s (ours)", 0.02, "par", True),
    ("ours_dpo_bf16", "trl_default", "peak RSS vs TRL defaults, same precision", 1.0, "rss",
     True),
    ("ours_dpo", "trl_default", "peak RSS, ours without bf16 vs TRL defaults", 1.0, "rss",
     False),
    ("ours_dpo", "trl_same", "peak RSS vs TRL, same settings", 1.0, "rss", True),
]
# The SmolLM2 + LoRA workload (issue 13): the same arms, on a 49,152-token vocabulary, where
# TRL's full-vocabulary logits at every position cost most.
SMOLLM2_RATIOS = [
    ("ours_dpo", "trl_same", "tokens/s, LoRA, vs TRL + peft, same settings", 1.5, "speed", True),
    ("ours_dpo", "trl_same", "peak RSS, LoRA, vs TRL + peft, same settings", 0.8, "rss", True),
    ("ours_dpo", "trl_same_heap", "tokens/s, LoRA, vs TRL + peft, same settings and heap",
     None, "speed", True),
    ("ours_dpo", "trl_same_heap", "peak RSS, LoRA, vs TRL + peft, same settings and heap",
     None, "rss", True),
    ("ours_dpo_glibc", "trl_same", "tokens/s, LoRA, both on glibc's default heap", None,
     "speed", True),
    ("ours_dpo_glibc", "trl_same", "peak RSS, LoRA, both on glibc's default heap", None, "rss",
     True),
    ("ours_dpo_trim", "trl_same", "tokens/s, LoRA, trim_heap, vs TRL + peft, same settings",
     1.5, "speed", True),
    ("ours_dpo_trim", "trl_same", "peak RSS, LoRA, trim_heap, vs TRL + peft, same settings",
     0.8, "rss", True),
    ("ours_dpo_bf16", "trl_default", "tokens/s, LoRA, vs TRL + peft defaults, same precision",
     None, "speed", True),
    ("ours_dpo_bf16", "trl_default", "peak RSS, LoRA, vs TRL + peft defaults, same precision",
     None, "rss", True),
]
RATIOS_BY_MODEL = {"tiny": RATIOS, "smollm2": SMOLLM2_RATIOS}
PAR_MIN_REPS = 3

# Runs that must do the same math: step losses agree to LOSS_TOL at every step.
LOSS_PAIRS = [("ours_dpo", "trl_same"), ("ours_dpo_pre", "trl_same_pre"),
              ("ours_dpo", "ours_dpo_pre"), ("ours_dpo_trim", "trl_same"),
              ("ours_dpo_glibc", "trl_same"), ("ours_dpo", "trl_same_heap")]
# Informational only: TRL's defaults train in bf16 autocast, so its losses drift from fp32.
LOSS_INFO = [("ours_dpo", "trl_default"), ("ours_dpo_bf16", "trl_default")]
LOSS_TOL = 1e-4


def tokens_per_step(tokens_per_pair: list[int], order: list[int], batch_size: int) -> list[int]:
    """Non-pad tokens of each step's batch; ``order`` lists the pair indices visited, step
    after step (steps * batch_size)."""
    return [sum(tokens_per_pair[i] for i in order[s:s + batch_size])
            for s in range(0, len(order), batch_size)]


def throughput(step_ends: list[float], step_tokens: list[int], warmup: int,
               step_cpu: list[float] | None = None) -> dict:
    """Tokens/s over the steps after ``warmup`` (>= 1): tokens of steps warmup+1..N over
    the time from the end of step ``warmup`` to the end of step N. With ``step_cpu`` (the
    process's CPU seconds at each step end) also tokens per CPU-second, which other processes
    disturb far less than wall time (a diagnostic, not the headline figure)."""
    if not 1 <= warmup < len(step_ends):
        raise ValueError(f"need 1 <= warmup ({warmup}) < steps ({len(step_ends)})")
    if len(step_ends) != len(step_tokens):
        raise ValueError(f"{len(step_ends)} step times but {len(step_tokens)} steps of tokens")
    seconds = step_ends[-1] - step_ends[warmup - 1]
    tokens = sum(step_tokens[warmup:])
    out = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
           "window": (step_ends[warmup - 1], step_ends[-1])}
    if step_cpu is not None:
        out["tokens_per_cpu_s"] = tokens / (step_cpu[-1] - step_cpu[warmup - 1])
    return out


def max_loss_diff(a: list[float], b: list[float]) -> float:
    """Largest absolute step-loss difference; inf when the runs have different step counts."""
    if len(a) != len(b) or not a:
        return float("inf")
    return max(abs(x - y) for x, y in zip(a, b))


def summarize(values: list[float]) -> dict:
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / med if med else 0.0, "n": len(values)}


def arm_precision(runs: list[dict]) -> str:
    """The precision an arm's training forwards really used (workers.watch_precision):
    "bf16", "fp32", ...; "unknown" if not recorded, "a/b" if its runs differ."""
    return "/".join(sorted({r.get("precision") or "unknown" for r in runs}))


def par_verdict(paired: list[float], tolerance: float) -> str:
    """Within ``tolerance`` of parity, judged from the per-repetition (paired) ratios: met when
    their median is >= 1 - tolerance; MISSED when it is below and no repetition reaches parity
    (consistently slower); otherwise the repetitions straddle parity and the row is not judged."""
    if len(paired) < PAR_MIN_REPS:
        return f"not judged: {len(paired)} repetition(s), need {PAR_MIN_REPS}"
    if statistics.median(paired) >= 1 - tolerance:
        return "met"
    if max(paired) < 1:
        return "MISSED"
    return (f"not judged: median below {1 - tolerance:g} but the repetitions range "
            f"{min(paired):.2f}-{max(paired):.2f}, across parity (noise)")


def ratio_rows(runs_by_arm: dict[str, list[dict]], ratios: list[tuple] = RATIOS) -> list[dict]:
    """Every ``ratios`` entry (default: the tiny model's) whose arms both ran: the ratio (of
    medians; for "par" rows the median of the paired ratios), the per-repetition (paired, same
    repetition) range, the precisions really used, the target and its verdict: "met",
    "MISSED", or "not judged: <why>" when a like-for-like row ran at different precisions or,
    for timings, when machine load was not measured or a run was flagged busy."""
    rows = []
    for num, den, what, target, kind, alike in ratios:
        if num not in runs_by_arm or den not in runs_by_arm:
            continue
        a, b = runs_by_arm[num], runs_by_arm[den]
        key = "peak_rss_bytes" if kind == "rss" else "tokens_per_s"
        paired = [x[key] / y[key] for x, y in zip(a, b)]
        if kind == "par":
            med = statistics.median(paired)
        else:
            med = statistics.median(r[key] for r in a) / statistics.median(r[key] for r in b)
        pa, pb = arm_precision(a), arm_precision(b)
        timed = kind != "rss"  # peak RSS does not depend on other processes; timings do
        if target is None:
            verdict = ""
        elif alike and (pa != pb or "unknown" in pa):
            verdict = f"not judged: precisions differ or unknown ({num} {pa}, {den} {pb})"
        elif timed and any(r.get("other_cpu") is None for r in a + b):
            verdict = "not judged: machine load not measured"
        elif timed and any(r["busy"] for r in a + b):
            verdict = "not judged: machine busy"
        elif kind == "par":
            verdict = par_verdict(paired, target)
        else:
            met = med >= target if kind == "speed" else med <= target
            verdict = "met" if met else "MISSED"
        rows.append({"num": num, "den": den, "what": what, "ratio": med,
                     "paired_min": min(paired), "paired_max": max(paired),
                     "precisions": f"{pa} / {pb}", "target": target, "kind": kind,
                     "verdict": verdict})
    return rows


def loss_rows(runs_by_arm: dict[str, list[dict]]) -> list[dict]:
    """Step-loss agreement for LOSS_PAIRS (checked) and LOSS_INFO (reported), using each
    arm's first run (every run of an arm is deterministic and does the same math)."""
    rows = []
    for pairs, checked in ((LOSS_PAIRS, True), (LOSS_INFO, False)):
        for a, b in pairs:
            if a in runs_by_arm and b in runs_by_arm:
                diff = max_loss_diff(runs_by_arm[a][0]["losses"], runs_by_arm[b][0]["losses"])
                rows.append({"a": a, "b": b, "max_abs_diff": diff, "checked": checked,
                             "ok": diff <= LOSS_TOL if checked else None})
    return rows


def _fmt_other(other: dict | None) -> str:
    return "n/a" if other is None else f"{other['mean']:.2f} (max {other['max']:.2f})"


def markdown(result: dict) -> str:
    """The README-ready report: table per arm, ratios, loss checks, machine load."""
    lines = [
        "| run | tokens/s (median) | spread | tokens/CPU-s | peak RSS MiB (median) "
        "| start-up s | other CPU, cores | precision used |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for arm, s in result["arms"].items():
        mark = " (!)" if s["busy_runs"] else ""
        lines.append(
            f"| {arm}: {s['label']} | {s['tokens_per_s']['median']:,.0f}{mark} "
            f"| {100 * s['tokens_per_s']['spread']:.1f}% "
            f"| {s['tokens_per_cpu_s']['median']:,.0f} "
            f"| {s['peak_rss_bytes']['median'] / MIB:,.0f} "
            f"| {s['startup_s']['median']:.1f} | {s['other_cpu']} | {s['precision']} |"
        )
    lines += ["", "| ratio | precisions | median | per-repetition range | target | verdict |",
              "|---|---|---:|---:|---:|---|"]
    for r in result["ratios"]:
        t, op = r["target"], {"speed": ">=", "rss": "<=", "par": "median >="}[r["kind"]]
        target = "" if t is None else f"{op} {1 - t if r['kind'] == 'par' else t:.2f}"
        lines.append(f"| {r['what']} ({r['num']} / {r['den']}) | {r['precisions']} "
                     f"| {r['ratio']:.2f} | {r['paired_min']:.2f}-{r['paired_max']:.2f} "
                     f"| {target} | {r['verdict']} |")
    lines += ["", f"Step losses (max |difference| over all steps; must be <= {LOSS_TOL:g}):"]
    for r in result["losses"]:
        status = ("OK" if r["ok"] else "FAILED") if r["checked"] else "informational (bf16)"
        lines.append(f"- {r['a']} vs {r['b']}: {r['max_abs_diff']:.2e} {status}")
    lines.append(f"- token ids identical on both sides: {result['ids_identical']}")
    for arm, s in result["arms"].items():
        if s["ref_cache_hits"]:
            lines.append(f"- {arm}: reference log-probs read from the on-disk cache in "
                         f"{sum(s['ref_cache_hits'])} of {len(s['ref_cache_hits'])} runs "
                         "(the first run fills it; TRL recomputes them in every process)")
    return "\n".join(lines)


def arm_summary(label: str, runs: list[dict]) -> dict:
    others = [r["other_cpu"] for r in runs if r["other_cpu"] is not None]
    worst = max(others, key=lambda o: o["mean"]) if others else None
    return {
        "label": label,
        "tokens_per_s": summarize([r["tokens_per_s"] for r in runs]),
        "tokens_per_cpu_s": summarize([r["tokens_per_cpu_s"] for r in runs]),
        "peak_rss_bytes": summarize([r["peak_rss_bytes"] for r in runs]),
        "startup_s": summarize([r["startup_s"] for r in runs]),
        "other_cpu": _fmt_other(worst),
        "busy_runs": sum(r["busy"] for r in runs),
        "precision": arm_precision(runs),
        # Our precomputed runs: how many read the on-disk reference cache of an earlier run.
        "ref_cache_hits": [r["ref_cache_hit"] for r in runs if "ref_cache_hit" in r],
    }
