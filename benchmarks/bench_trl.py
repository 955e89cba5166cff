"""Our trainer vs. TRL's DPOTrainer on identical work, in one run.

    python benchmarks/bench_trl.py            # 3 interleaved repetitions of every arm
    python benchmarks/bench_trl.py --quick    # smoke mode: tiny data, 4 steps, 1 repetition
    python benchmarks/bench_trl.py --model smollm2   # SmolLM2-135M + LoRA: ours vs TRL + peft

Builds a model, tokenizer and data locally (workload.py: a tiny random Llama, or SmolLM2-135M
with a LoRA adapter on both sides), then runs each arm (see workers.ARMS) in its
own process, interleaved (trl, ours, trl, ours, ...; the order reverses every repetition),
and prints tokens/s (non-pad prompt + chosen + rejected tokens over the steps after
warm-up) and peak RSS with medians, spreads and ratios. It checks that both trainers did
the same math (identical token ids; step losses equal to 1e-4) and records how much CPU
other processes used during every run: figures taken on a busy machine, or where the load
could not be measured (psutil missing), are flagged and their targets are not judged. Each
worker records the precision its training forwards really used (bf16 requested on a CPU
without native bf16 runs fp32 in our trainer); a like-for-like target is not judged when the
two sides' precisions differ. SafeDPO vs DPO (within 2%) is judged on the median of the paired
per-repetition ratios; below it, MISSED only if no repetition reaches parity, otherwise "not
judged" (the repetitions straddle parity: noise).

Exit status: 1 if a correctness check fails; with --check-targets also 1 if a target is
missed or could not be judged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from machine import CpuMonitor  # noqa: E402
from workload import PRESETS, Workload  # noqa: E402

QUICK = {"n_pairs": 32, "max_steps": 4, "warmup_steps": 1}
# On SmolLM2 the like-for-like pair only: each run costs about a minute there.
SMOLLM2_ARMS = ("trl_same", "ours_dpo", "ours_dpo_glibc", "trl_same_heap")
# The tiny model: every arm but the heap comparisons (measured on SmolLM2, where they matter).
TINY_ARMS = ("trl_default", "trl_same", "ours_dpo", "ours_dpo_bf16", "ours_dpo_trim",
             "ours_safedpo", "trl_same_pre", "ours_dpo_pre")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="repetitions of every arm (default 3)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke mode: {QUICK}, 1 repetition (figures meaningless)")
    p.add_argument("--model", choices=list(PRESETS), default="tiny",
                   help="tiny: a 4.2M random Llama, full fine-tuning (default); smollm2: "
                        "SmolLM2-135M-Instruct with LoRA, its own sizes and targets "
                        "(workload.SMOLLM2, report.SMOLLM2_RATIOS)")
    p.add_argument("--arms", help="comma-separated arms to run (default: "
                                  f"{','.join(TINY_ARMS)} for tiny; "
                                  f"{','.join(SMOLLM2_ARMS)} for smollm2; choose from "
                                  f"{','.join(_arm_names())})")
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker (default 2)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default 30; smollm2 12)")
    p.add_argument("--warmup", type=int, help="steps left out of tokens/s (default 5; smollm2 2)")
    p.add_argument("--pairs", type=int, help="preference pairs (default 256; smollm2 64)")
    p.add_argument("--prompt-tokens", type=int, help="prompt length in words (= tokens)")
    p.add_argument("--response-tokens", type=int,
                   help="answer length in words (= tokens), before --length-jitter; e.g. 200 "
                        "for PKU-SafeRLHF-like long answers, where a shared prompt saves less")
    p.add_argument("--batch-size", type=int, help="pairs per step")
    p.add_argument("--length-jitter", type=int,
                   help="shorten responses by up to N words at random, so batches have padding")
    p.add_argument("--max-other-cpu", type=float, default=0.1,
                   help="flag a run as busy when other processes used more than this many cores "
                        "on average while it was timed (default 0.1)")
    p.add_argument("--out", default="bench_out", help="where results.json / results.md go")
    p.add_argument("--check-targets", action="store_true",
                   help="exit 1 when a target is missed or cannot be judged")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def _arm_names() -> list[str]:
    from workers import ARMS

    return list(ARMS)


def _versions() -> dict:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        **{name: version(name) for name in ("safedpo", "trl", "torch", "transformers",
                                            "accelerate", "datasets")},
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def _worker_env(threads: int, heap_tuned: bool) -> dict:
    """The worker's environment; with ``heap_tuned`` glibc's small-block caches are off as
    the ``safedpo`` command turns them off (safedpo.heap), else glibc's defaults."""
    from safedpo.heap import OPT_OUT, heap_env

    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    env = (heap_env(env) or env) if heap_tuned else {**env, OPT_OUT: "0"}
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1", "WANDB_MODE": "disabled",
        "PYTHONWARNINGS": "ignore",
    })
    return env


def check_heap(arm: str, heap_tuned: bool) -> None:
    """A worker ran with the heap its arm asked for (glibc's caches off only on glibc), or the
    benchmark stops: a figure is never labelled with a heap it did not have."""
    from safedpo.heap import is_glibc
    from workers import ARMS

    if heap_tuned != (ARMS[arm].heap_tuned and is_glibc()):
        raise RuntimeError(f"worker {arm} ran with heap_tuned={heap_tuned}, not as asked")


def run_one(arm: str, rep: int, workdir: Path, threads: int, interval: float = 0.25) -> dict:
    """Run one arm in a fresh process while sampling machine load. Returns the worker's
    result plus the parent's wall time, start time and load monitor."""
    run_dir = workdir / "runs" / f"{rep}-{arm}"
    result = run_dir / "result.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", arm,
           "--workdir", str(workdir), "--run-dir", str(run_dir), "--result", str(result)]
    log = (run_dir / "worker.log").open("w")
    monitor = CpuMonitor(interval)
    launched = time.monotonic()
    from workers import ARMS

    proc = subprocess.Popen(cmd, env=_worker_env(threads, ARMS[arm].heap_tuned), stdout=log,
                            stderr=subprocess.STDOUT)
    monitor.start(proc.pid)
    rc = proc.wait()
    monitor.stop()
    log.close()
    if rc != 0:
        tail = (run_dir / "worker.log").read_text()[-4000:]
        raise RuntimeError(f"worker {arm} (repetition {rep}) exited with {rc}:\n{tail}")
    out = json.loads(result.read_text())
    check_heap(arm, out["heap_tuned"])
    out.update(rep=rep, launched=launched, wall_s=time.monotonic() - launched, monitor=monitor)
    return out


def _measure(run: dict, workload: Workload, step_tokens: list[int], busy_limit: float) -> None:
    """Add tokens/s, start-up time and other-process CPU (over the timed window) to a run."""
    if len(run["step_ends"]) != workload.max_steps:
        raise RuntimeError(f"{run['arm']}: {len(run['step_ends'])} optimizer steps, "
                           f"expected {workload.max_steps}")
    tp = report.throughput(run["step_ends"], step_tokens, workload.warmup_steps, run["step_cpu"])
    monitor: CpuMonitor = run.pop("monitor")
    # Quick runs' timed windows can be shorter than the sampling interval: use the whole run.
    other = monitor.other_cores(*tp["window"]) or monitor.other_cores()
    run.update(
        tokens_per_s=tp["tokens_per_s"],
        tokens_per_cpu_s=tp["tokens_per_cpu_s"],
        timed_tokens=tp["tokens"],
        timed_s=tp["seconds"],
        startup_s=run["step_ends"][0] - run["launched"],
        other_cpu=other,
        busy=other is not None and other["mean"] > busy_limit,
        loadavg_at_start=monitor.loadavg_start,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        from workers import worker_main

        worker_main(args.worker, Path(args.workdir), Path(args.run_dir), Path(args.result),
                    int(os.environ.get("OMP_NUM_THREADS", "2")))
        return 0

    from workers import ARMS, ours_order, ours_tokens
    from workload import build

    default_arms = SMOLLM2_ARMS if args.model == "smollm2" else TINY_ARMS
    arms = [a.strip() for a in (args.arms or ",".join(default_arms)).split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    workload = Workload(**{**PRESETS[args.model], **(QUICK if args.quick else {})})
    overrides = {"max_steps": args.steps, "warmup_steps": args.warmup, "n_pairs": args.pairs,
                 "length_jitter": args.length_jitter, "prompt_tokens": args.prompt_tokens,
                 "response_tokens": args.response_tokens, "batch_size": args.batch_size}
    workload = replace(workload, **{k: v for k, v in overrides.items() if v is not None})
    reps = 1 if args.quick else args.reps

    workdir = Path(tempfile.mkdtemp(prefix="safedpo-bench-"))
    try:
        print(f"building the workload in {workdir} ...", flush=True)
        built = build(workload, workdir)
        (workdir / "workload.json").write_text(workload.to_json())
        order = ours_order(workload)
        (workdir / "order.json").write_text(json.dumps(order))
        ours_digest, tokens_per_pair = ours_tokens(workdir, workload, order)
        step_tokens = report.tokens_per_step(tokens_per_pair, order, workload.batch_size)
        lora = f", LoRA r={workload.lora_r} alpha={workload.lora_alpha}" if workload.lora_r else ""
        print(f"model {workload.model}: {built['n_params'] / 1e6:.2f}M parameters, vocab "
              f"{built['vocab_size']}{lora}; "
              f"{workload.n_pairs} pairs, batch {workload.batch_size}, {workload.max_steps} steps "
              f"({workload.warmup_steps} warm-up), {args.threads} torch threads per worker",
              flush=True)

        runs_by_arm: dict[str, list[dict]] = {a: [] for a in arms}
        for rep in range(reps):
            order = arms if rep % 2 == 0 else arms[::-1]
            for arm in order:
                run = run_one(arm, rep, workdir, args.threads)
                _measure(run, workload, step_tokens, args.max_other_cpu)
                runs_by_arm[arm].append(run)
                other = run["other_cpu"]
                other_text = "n/a" if other is None else f"{other['mean']:.2f}"
                print(f"  rep {rep} {arm:14s} {run['tokens_per_s']:8,.0f} tokens/s  "
                      f"peak RSS {run['peak_rss_bytes'] / report.MIB:6,.0f} MiB  "
                      f"other CPU {other_text} cores{'  BUSY' if run['busy'] else ''}",
                      flush=True)

        # Same tokens on both sides: TRL's tokenization of the data vs. ours.
        trl_runs = [r for a in arms if ARMS[a].tool == "trl" for r in runs_by_arm[a]]
        ids_identical = all(r["ids_digest"] == ours_digest for r in trl_runs) if trl_runs else None

        result = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "versions": _versions(),
            "workload": json.loads(workload.to_json()),
            "n_params": built["n_params"],
            "threads": args.threads,
            "busy_limit_cores": args.max_other_cpu,
            "arms": {a: report.arm_summary(ARMS[a].label, runs_by_arm[a])
                     for a in arms},
            "ratios": report.ratio_rows(runs_by_arm, report.RATIOS_BY_MODEL[workload.model]),
            "losses": report.loss_rows(runs_by_arm),
            "ids_identical": ids_identical,
            "runs": [{k: v for k, v in r.items() if k not in ("step_ends", "step_cpu")}
                     for a in arms for r in runs_by_arm[a]],
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    text = report.markdown(result)
    busy = sum(s["busy_runs"] for s in result["arms"].values())
    print()
    print(text)
    v = result["versions"]
    print(f"\nversions: python {v['python']}, torch {v['torch']}, transformers "
          f"{v['transformers']}, trl {v['trl']}, safedpo {v['safedpo']}; {v['cpu']} "
          f"({v['cpu_count']} cores), {args.threads} threads per worker")
    if busy:
        print(f"\nWARNING: the machine was busy during {busy} run(s) marked (!): other "
              f"processes used more than {args.max_other_cpu} cores on average while they were "
              "timed, so their timings and the ratios that use them are NOT trustworthy. "
              "Re-run on a quiet machine.")
    unmeasured = sum(r["other_cpu"] is None for r in result["runs"])
    if unmeasured:
        print(f"\nWARNING: machine load was not measured for {unmeasured} run(s) (is psutil "
              "installed?): timing targets are not judged.")
    if args.quick:
        print("\n--quick: smoke mode, the figures are not measurements.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "results.md").write_text(text + "\n")
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")

    failed = [r for r in result["losses"] if r["checked"] and not r["ok"]]
    if failed or ids_identical is False:
        print("\nFAILED: the two trainers did not do the same math "
              f"(loss checks failed: {[(r['a'], r['b']) for r in failed]}; "
              f"token ids identical: {ids_identical})")
        return 1
    if args.check_targets and any(r["verdict"] not in ("met", "") for r in result["ratios"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
