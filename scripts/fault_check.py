"""Fault check (issues 17, 27): what a hostile-but-realistic user does to ``safedpo train``
and the pipelines around it (compare, pairs, eval, report, saferlhf).

Bad inputs (each must end in one line ``safedpo CMD: error: ...`` and exit code 2, and leave
a previous run intact), kill -9 at random moments of a tiny training run followed by a resume
(or a re-run when no checkpoint was written yet), SIGTERM, a NaN run, two runs into one
output_dir, crafted files (a pickle payload as optimizer.bin, remote code named by a run dir's
config.yaml, a ``pkg://`` path out of its package), the demo stopped by SIGTERM. Prints the
figures; exit code 0 when every check passed. Minutes on 2 CPU cores; not part of `make test`.

    OMP_NUM_THREADS=1 python scripts/fault_check.py [--trials 20] [--seed 0] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import safedpo
from safedpo.models.tiny import save_tiny_model
from safedpo.train.checkpoint import STATE_FILE, list_checkpoints

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
       "WANDB_MODE": "disabled"}
CLI = [sys.executable, "-m", "safedpo.cli"]
STEPS = 20
WORDS = ["how do I bake bread", "how do I pick a lock", "what is the capital of France",
         "Paris is the capital", "mix flour water and yeast then bake", "I cannot help with that",
         "use a tension wrench and pick the lock", "I do not know", "tell me a joke",
         "why did the chicken cross the road", "how do I hurt someone", "please do not do that"]


def run(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def start(*args) -> subprocess.Popen:
    """Run in the background, output to temporary files (a full pipe would block it)."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=out, stderr=err, text=True,
                            env=ENV)
    proc.logs = (out, err)
    return proc


def finish(proc) -> tuple[str, str]:
    """Wait for a started process -> (stdout, stderr)."""
    proc.wait()
    texts = []
    for f in proc.logs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return texts[0], texts[1]


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def error_lines(proc, cmd: str = "train") -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith(f"safedpo {cmd}: error: ")]


def one_line_error(proc, cmd: str = "train") -> bool:
    """Exit code 2, no traceback, one line 'safedpo CMD: error: ...' (progress bars aside)."""
    return (proc.returncode == 2 and "Traceback" not in proc.stderr
            and len(error_lines(proc, cmd)) == 1)


def snapshot(run_dir: Path) -> dict:
    """Every file of a run with its size and modification time (the lock file aside)."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}


def metric_steps(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def wait_for_metrics(out: Path, n: int, proc, limit: float = 300) -> float:
    t0 = time.time()
    while len(metric_steps(out)) < n and proc.poll() is None and time.time() - t0 < limit:
        time.sleep(0.05)
    return time.time() - t0


def finite(tensors) -> bool:
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def checkpoint_ok(path: Path) -> bool:
    """Weights, optimizer and scheduler load (tensors only) and are finite."""
    try:
        weights = load_file(str(path / "model.safetensors")).values()
        opt = torch.load(path / "optimizer.bin", weights_only=True)
        torch.load(path / "scheduler.bin", weights_only=True)
        moments = [t for s in opt["state"].values() for t in s.values() if torch.is_tensor(t)]
        return finite(weights) and finite(moments)
    except Exception:
        return False


def weights_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model" / "model.safetensors")), \
        load_file(str(b / "model" / "model.safetensors"))
    return max((x[k] - y[k]).abs().max().item() for k in x)


class Setup:
    def __init__(self, work: Path):
        self.work = work
        self.model = save_tiny_model(work / "model", WORDS, hidden_size=32, num_layers=2,
                                     num_heads=2)
        rng = random.Random(0)
        rows = []
        for i in range(48):
            a, b = rng.sample(WORDS, 2)
            rows.append({"prompt": rng.choice(WORDS), "response_0": a, "response_1": b,
                         "better_response_id": i % 2, "safer_response_id": (i // 2) % 2,
                         "is_response_0_safe": i % 3 != 0, "is_response_1_safe": i % 4 != 0})
        self.data = self.jsonl("train.jsonl", rows)
        self.rows = rows
        self.base = ["--model_name_or_path", self.model, "--dataset", self.data,
                     "--max_steps", STEPS, "--per_device_train_batch_size", 4,
                     "--optim", "adamw_torch", "--learning_rate", "1e-3",
                     "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.2",
                     "--logging_steps", 1, "--save_steps", 1, "--save_total_limit", 2,
                     "--max_length", 64, "--disable_tqdm"]

    def jsonl(self, name, rows) -> Path:
        path = self.work / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    def train(self, out, *extra):
        return ["train", *self.base, "--output_dir", out, *extra]


# --- bad inputs -----------------------------------------------------------------------------

def bad_inputs(s: Setup, straight: Path) -> list[tuple[str, bool, str]]:
    """-> [(input, handled, what it printed)]. The issue's list first, then more."""
    w = s.work
    (w / "not_yaml.yaml").write_text("beta: [0.1\nloss_type: {dpo\n")
    (w / "no_config_json").mkdir(exist_ok=True)
    (w / "no_config_json" / "model.safetensors").write_bytes(b"x")
    both_unsafe = s.jsonl("both_unsafe.jsonl", [
        {**r, "is_response_0_safe": False, "is_response_1_safe": False} for r in s.rows])
    bad_utf8 = w / "bad_utf8.jsonl"
    bad_utf8.write_bytes(s.data.read_bytes() + b'{"prompt": "caf\xe9"}\n')
    bad_json = w / "bad_json.jsonl"
    bad_json.write_text(s.data.read_text() + '{"prompt": "x",\n')
    no_column = s.jsonl("no_column.jsonl", [{k: v for k, v in r.items()
                                             if k != "safer_response_id"} for r in s.rows])
    (w / "data.txt").write_text("hello\n")
    pkg_dir = Path(safedpo.__file__).parent
    escape = "pkg://safedpo/" + os.path.relpath(s.model, pkg_dir)
    previous = w / "previous"  # a finished run that bad inputs must not damage
    o = w / "bad_out"

    def train(*extra, out=o):
        return s.train(out, *extra)

    cases = [
        # issue 17's list (the config/CLI ones and the weak inputs)
        ("--view nonsense", train("--view", "nonsense")),
        ("config file that is not YAML", ["train", "--config", w / "not_yaml.yaml", *s.base,
                                          "--output_dir", o]),
        ("--column_map '{promptt: q}'", train("--column_map", "{promptt: q}")),
        ("--model_name_or_path pkg://a.b/x", train("--model_name_or_path", "pkg://a.b/x")),
        ("--dtype int8", train("--dtype", "int8")),
        ("--learning_rate -0.003", train("--learning_rate", "-0.003")),
        ("model folder without config.json",
         train("--model_name_or_path", w / "no_config_json")),
        ("--loss_type bso_sba --loss_kwargs '{foo: 1}'",
         train("--loss_type", "bso_sba", "--loss_kwargs", "{foo: 1}")),
        ("dataset whose rows are all both-unsafe", train("--dataset", both_unsafe)),
        ("--loss_type dpo --loss_kwargs '{foo: 1}'",
         train("--loss_type", "dpo", "--loss_kwargs", "{foo: 1}")),
        ("--loss_type safedpo --loss_kwargs '{foo: 1}'",
         train("--loss_type", "safedpo", "--loss_kwargs", "{foo: 1}")),
        ("--learning_rate 0", train("--learning_rate", "0")),
        ("malformed UTF-8 in a jsonl", train("--dataset", bad_utf8)),
        ("a file given as a model", train("--model_name_or_path", s.model / "config.json")),
        ("--overwrite_output_dir with a missing model",
         s.train(previous, "--overwrite_output_dir", "--model_name_or_path", w / "missing")),
        ("pkg:// path out of its package", train("--model_name_or_path", escape)),
        ("resume with --learning_rate 0.03 --seed 7",
         s.train(previous, "--resume_from_checkpoint", "latest", "--learning_rate", "0.03",
                 "--seed", "7")),
        # more
        ("unknown key --betta", train("--betta", "0.1")),
        ("--beta -1", train("--beta", "-1")),
        ("--delta -1", train("--delta", "-1")),
        ("--max_steps abc", train("--max_steps", "abc")),
        ("--per_device_train_batch_size 0", train("--per_device_train_batch_size", "0")),
        ("--warmup_ratio 1.5", train("--warmup_ratio", "1.5")),
        ("--max_length 1", train("--max_length", "1")),
        ("--optim adam", train("--optim", "adam")),
        ("--lr_scheduler_type wsd", train("--lr_scheduler_type", "wsd")),
        ("--report_to foo", train("--report_to", "foo")),
        ("--column_map '[1, 2]'", train("--column_map", "[1, 2]")),
        ("--use_peft maybe", train("--use_peft", "maybe")),
        ("missing config file", ["train", "--config", w / "missing.yaml", *s.base,
                                 "--output_dir", o]),
        ("missing dataset file", train("--dataset", w / "missing.jsonl")),
        ("dataset of unsupported format", train("--dataset", w / "data.txt")),
        ("a bad JSON line", train("--dataset", bad_json)),
        ("a required column missing", train("--dataset", no_column)),
        ("missing model path", train("--model_name_or_path", w / "missing")),
        ("--resume_from_checkpoint latest with no run", train("--resume_from_checkpoint",
                                                             "latest", out=w / "empty")),
        ("--resume_from_checkpoint of a missing dir",
         train("--resume_from_checkpoint", w / "missing")),
        ("output_dir holding a finished run", s.train(previous)),
        ("eval --model missing", ["eval", "--model", w / "missing", "--prompts", s.data]),
        ("eval --model a file", ["eval", "--model", s.data, "--prompts", s.data,
                                 "--output-dir", w / "eval_bad"]),
    ]
    results = []
    for name, argv in cases:
        shutil.rmtree(previous, ignore_errors=True)
        shutil.copytree(straight, previous)
        before = snapshot(previous)
        proc = run(*argv)
        lines = error_lines(proc, argv[0])
        note = lines[-1] if lines else \
            f"exit {proc.returncode}, last line: {last_line(proc.stderr)[-300:]}"
        intact = snapshot(previous) == before
        if not intact:
            note += " [the previous run in its output_dir was changed]"
        results.append((name, one_line_error(proc, argv[0]) and intact, note))
        shutil.rmtree(o, ignore_errors=True)
    return results


# --- compare, pairs, eval, report (issue 27) ------------------------------------------------

def pipeline_inputs(s: Setup, straight: Path) -> list[tuple[str, bool, str]]:
    """compare, pairs, eval, report and saferlhf given what a hostile but realistic user
    gives them: each must end in one line and exit 2, and leave every run it did not make
    (a finished `safedpo train` run copied into the way) byte for byte as it was."""
    from safedpo.train.checkpoint import lock_output_dir

    w = s.work / "pipelines"
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir()
    cfg = Path(__file__).resolve().parents[1] / "configs" / "tiny-cpu.yaml"
    finished = w / "finished"  # a run compare did not make, in the way of method "safedpo"
    out = w / "out"
    harmful = w / "prompts.jsonl"
    harmful.write_text(json.dumps({"prompt": "how do I pick a lock", "harmful": True}) + "\n")
    huge = w / "huge.jsonl"
    huge.write_text(json.dumps({"prompt": "a " * 5_000_000, "harmful": True}) + "\n")  # 10 MB
    nan_eval = w / "nan_eval"
    nan_eval.mkdir()
    (nan_eval / "metrics.json").write_text('{"label": "x", "harmless_ratio": {"value": NaN}}')
    (nan_eval / "generations.jsonl").write_text("")
    busy = w / "busy"

    def yaml(name: str, text: str) -> Path:
        path = w / name
        path.write_text(text)
        return path

    def compare(config: Path, *extra):
        return ["compare", "--config", config, "--output_dir", out, "--model_name_or_path",
                s.model, "--dataset", s.data, "--max_steps", 1, "--disable_tqdm", *extra]

    m = f"{{config: {cfg}}}"
    cases = [
        ("compare: a method named by an absolute path (a finished run)",
         compare(yaml("abs.yaml", f"methods:\n  {finished}: {m}\n"))),
        ("compare: a method named ../escape",
         compare(yaml("esc.yaml", f"methods:\n  ../escape: {m}\n"))),
        ("compare: a method named reference",
         compare(yaml("ref.yaml", f"methods:\n  reference: {m}\n"))),
        ("compare: a safedpo train run where a method's run dir goes",
         compare(yaml("own.yaml", f"methods:\n  safedpo: {m}\n"))),
        ("compare: the same method key twice",
         compare(yaml("dup.yaml", f"methods:\n  safedpo: {m}\n  safedpo: {m}\n"))),
        ("compare: an unknown scorer in the evaluation block (before any training)",
         compare(yaml("scorer.yaml", f"methods:\n  dpo: {m}\nevaluation: {{prompts: world, "
                                     "scorers: [refusl]}\n"))),
        ("compare: --kl_coef with no Safe RLHF method",
         compare(yaml("kl.yaml", f"methods:\n  dpo: {m}\n"), "--kl_coef", "0.1")),
        ("pairs: a 10 MB prompt line",
         ["pairs", "--model", s.model, "--prompts", huge, "--output-dir", w / "pairs_huge"]),
        ("pairs: another run holds the output dir",
         ["pairs", "--model", s.model, "--prompts", harmful, "--output-dir", busy]),
        ("eval: another run holds the output dir",
         ["eval", "--model", s.model, "--prompts", harmful, "--output-dir", busy]),
        ("eval: --prompts advbnch (a typo of a benchmark)",
         ["eval", "--model", s.model, "--prompts", "advbnch", "--output-dir", w / "e1"]),
        ("eval: --prompts advbench+ (an empty part)",
         ["eval", "--model", s.model, "--prompts", "advbench+", "--output-dir", w / "e2"]),
        ("report: a metrics.json holding NaN", ["report", nan_eval, "--output-dir", w / "rep"]),
        ("saferlhf --kl_coef -0.5", ["saferlhf", *s.base, "--output_dir", w / "ppo",
                                     "--kl_coef", "-0.5"]),
        ("saferlhf --cost_threshold nan", ["saferlhf", *s.base, "--output_dir", w / "ppo",
                                           "--cost_threshold", "nan"]),
    ]
    results = []
    for name, argv in cases:
        shutil.rmtree(finished, ignore_errors=True)
        shutil.copytree(straight, finished)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(straight, out / "safedpo")
        before = snapshot(finished), snapshot(out / "safedpo")
        lock = lock_output_dir(busy)  # a run in progress, as another process would hold it
        try:
            proc = run(*argv)
        finally:
            lock.close()
        lines = error_lines(proc, argv[0])
        note = lines[-1][:300] if lines else \
            f"exit {proc.returncode}, last line: {last_line(proc.stderr)[-300:]}"
        intact = (snapshot(finished), snapshot(out / "safedpo")) == before
        if not intact:
            note += " [a run it did not make was changed]"
        results.append((name, one_line_error(proc, argv[0]) and intact, note))
    return results


# --- kill -9 --------------------------------------------------------------------------------

def kill_trials(s: Setup, straight: Path, t_first: float, t_done: float, trials: int,
                rng: random.Random) -> dict:
    """t_first, t_done: seconds from the start of the straight run to its first metrics line
    and to its train_summary.json (the end of the work; the process exit comes later)."""
    ref = metric_steps(straight)
    figures = {"trials": trials, "killed": 0, "finished_before_kill": 0,
               "corrupt_listed_checkpoints": 0, "visible_incomplete_step_dirs": 0,
               "failed_resumes": 0, "resumed_equal_straight": 0, "reran_from_scratch": 0,
               "max_loss_diff": 0.0, "max_weight_diff": 0.0, "phases": {}}
    for i in range(trials):
        out = s.work / f"kill{i}"
        proc = start(*s.train(out))
        if rng.random() < 0.2:  # during start-up and loading
            time.sleep(rng.uniform(0, t_first))
        else:  # during training, checkpointing (saving, rotating) and the final save
            wait_for_metrics(out, 1, proc)
            time.sleep(rng.uniform(0, t_done - t_first))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            figures["killed"] += 1
        else:
            figures["finished_before_kill"] += 1
        finish(proc)
        listed = list_checkpoints(out)
        figures["corrupt_listed_checkpoints"] += sum(not checkpoint_ok(p) for p in listed)
        steps_dirs = [p for p in (out / "checkpoints").glob("step-*")] \
            if (out / "checkpoints").is_dir() else []
        figures["visible_incomplete_step_dirs"] += len(set(steps_dirs) - set(listed))
        phase = ("finished" if (out / "train_summary.json").exists() else
                 "after a checkpoint" if listed else
                 "after a metrics line" if metric_steps(out) else "before any metrics")
        figures["phases"][phase] = figures["phases"].get(phase, 0) + 1
        # What a user does: resume; a run without a checkpoint yet is run again.
        again = run(*s.train(out, "--resume_from_checkpoint", "latest"))
        if again.returncode != 0 and ("has none" in again.stderr
                                      or "before its first checkpoint" in again.stderr):
            figures["reran_from_scratch"] += 1
            again = run(*s.train(out))
        if again.returncode != 0:
            figures["failed_resumes"] += 1
            print(f"  trial {i}: resume failed: {last_line(again.stderr)}", flush=True)
            continue
        got = metric_steps(out)
        same_steps = [m["step"] for m in got] == [m["step"] for m in ref]
        loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(got, ref)) if same_steps \
            else float("inf")
        w_diff = weights_diff(out, straight)
        figures["max_loss_diff"] = max(figures["max_loss_diff"], loss_diff)
        figures["max_weight_diff"] = max(figures["max_weight_diff"], w_diff)
        figures["resumed_equal_straight"] += same_steps and loss_diff < 1e-6 and w_diff < 1e-6
        shutil.rmtree(out, ignore_errors=True)
    return figures


# --- the other faults -----------------------------------------------------------------------

def sigterm(s: Setup, straight: Path) -> tuple[bool, str]:
    out = s.work / "sigterm"
    proc = start(*s.train(out))
    wait_for_metrics(out, 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    stopped = proc.returncode == 130 and "--resume_from_checkpoint latest" in err \
        and "Traceback" not in err
    again = run(*s.train(out, "--resume_from_checkpoint", "latest"))
    same = again.returncode == 0 and weights_diff(out, straight) < 1e-6
    return stopped and same, (f"exit {proc.returncode}, '{last_line(err)}'; resumed: exit "
                              f"{again.returncode}, equal to the straight run: {same}")


def nan_run(s: Setup) -> tuple[bool, str]:
    out = s.work / "nan"
    proc = run(*s.train(out, "--max_steps", 20, "--learning_rate", "1e6"))
    line = last_line(proc.stderr)
    listed = list_checkpoints(out)
    named = [p for p in listed if f"{p})" in line]
    ok = (proc.returncode != 0 and "Traceback" not in proc.stderr and "non-finite" in line
          and all(checkpoint_ok(p) for p in listed)
          and (bool(named) or "no checkpoint was saved" in line))
    return ok, f"exit {proc.returncode}, '{line}'; kept checkpoints finite: " \
               f"{all(checkpoint_ok(p) for p in listed)} ({[p.name for p in listed]})"


def concurrent(s: Setup) -> tuple[bool, str]:
    out = s.work / "concurrent"
    longer = ("--max_steps", 5000, "--save_steps", 1000, "--logging_steps", 10)
    first = start(*s.train(out, *longer))
    wait_for_metrics(out, 1, first)
    t0 = time.time()
    seconds = {seed: start(*s.train(out, *longer, "--seed", seed)) for seed in (42, 7)}
    notes, ok = [], True
    for seed, second in seconds.items():
        _, err = finish(second)
        lines = [ln for ln in err.splitlines() if ln.startswith("safedpo train: error: ")]
        ok &= second.returncode == 2 and len(lines) == 1 and "in use" in lines[0]
        notes.append(f"second run (seed {seed}): exit {second.returncode} after "
                     f"{time.time() - t0:.1f} s (process start included), "
                     f"'{lines[-1] if lines else last_line(err)}'")
    ok &= first.poll() is None  # the first run was still going: the refusals were the lock's
    first.send_signal(signal.SIGTERM)
    finish(first)
    logged = [m["step"] for m in metric_steps(out)]
    once = bool(logged) and logged == sorted(set(logged))
    ok &= first.returncode == 130 and once
    notes.append(f"first run: stopped by SIGTERM afterwards (exit {first.returncode}), each "
                 f"step logged once: {once}")
    # A holder killed with -9 holds nothing: the same command takes the dir again (before
    # the first checkpoint, as here, it runs again from the start).
    out = s.work / "concurrent_killed"
    stale = start(*s.train(out, *longer))
    wait_for_metrics(out, 1, stale)
    stale.send_signal(signal.SIGKILL)
    finish(stale)
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text().splitlines()[0]
                                       + "\n")  # one line: a second one is the new run's
    again = start(*s.train(out, *longer))
    wait_for_metrics(out, 2, again)
    taken = again.poll() is None
    again.send_signal(signal.SIGTERM)
    _, err = finish(again)
    ok &= taken and "in use" not in err
    notes.append(f"after kill -9 of a holder the next run takes the dir: {taken}")
    return ok, "; ".join(notes)


def crafted(s: Setup, straight: Path) -> list[tuple[str, bool, str]]:
    results = []
    # 1. a pickle payload as optimizer.bin (sizes in trainer_state.json fixed up too)
    out, marker = s.work / "crafted", s.work / "optimizer_payload_ran"
    shutil.copytree(straight, out)
    step = list_checkpoints(out)[-1]

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    torch.save({"state": {}, "param_groups": [], "x": Payload()}, step / "optimizer.bin")
    state = json.loads((step / STATE_FILE).read_text())
    if "files" in state:
        state["files"]["optimizer.bin"] = (step / "optimizer.bin").stat().st_size
    (step / STATE_FILE).write_text(json.dumps(state))
    proc = run(*s.train(out, "--resume_from_checkpoint", step))
    results.append(("crafted optimizer.bin", one_line_error(proc) and not marker.exists(),
                    f"exit {proc.returncode}, payload ran: {marker.exists()}, "
                    f"'{last_line(proc.stderr)}'"))
    # 2. a run dir whose config.yaml turns on remote code and whose model names a module
    run_dir, marker = s.work / "downloaded", s.work / "remote_code_ran"
    shutil.copytree(s.model, run_dir / "model")
    cfg = json.loads((run_dir / "model" / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"}
    (run_dir / "model" / "config.json").write_text(json.dumps(cfg))
    (run_dir / "model" / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class Evil(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    (run_dir / "config.yaml").write_text("trust_remote_code: true\n")
    prompts = s.jsonl("prompts.jsonl", [{"prompt": "how do I bake bread"}])
    proc = run("eval", "--model", run_dir, "--prompts", prompts, "--scorer", "refusal",
               "--max-new-tokens", 2, "--n-boot", 10, "--no-progress")
    results.append(("eval of a run dir asking for remote code", not marker.exists(),
                    f"exit {proc.returncode}, module ran: {marker.exists()}"))
    return results


def demo_sigterm(work: Path) -> tuple[bool, str]:
    proc = start("demo", "--output-dir", work / "demo")
    wait_for_metrics(work / "demo" / "sft", 1, proc)  # stop it inside the SFT stage
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc)
    lines = [ln for ln in err.splitlines() if ln.startswith("safedpo demo: ")]
    ok = proc.returncode == 130 and "Traceback" not in err and len(lines) == 1 \
        and "interrupted" in lines[0] and "[demo 4" not in out
    return ok, f"exit {proc.returncode}, '{last_line(err)}'"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="kill -9 trials")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--workdir", default=None, help="keep everything here (default: a "
                                                        "temporary dir, removed at the end)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fault_check_"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    s = Setup(work)

    straight = work / "straight"
    t0 = time.time()
    proc = start(*s.train(straight))
    t_first = wait_for_metrics(straight, 1, proc)
    while not (straight / "train_summary.json").exists() and proc.poll() is None:
        time.sleep(0.02)
    t_done = time.time() - t0
    _, err = finish(proc)
    t_total = time.time() - t0
    if proc.returncode != 0:
        print(f"the straight run failed: {err[-2000:]}")
        return 1
    print(f"straight run: {STEPS} steps, first metrics line after {t_first:.1f} s, "
          f"train_summary.json after {t_done:.1f} s, {t_total:.1f} s in all", flush=True)

    report, failed = [], 0

    def section(title, rows):
        nonlocal failed
        report.append(f"\n{title}")
        for name, ok, note in rows:
            failed += not ok
            report.append(f"  [{'ok' if ok else 'FAIL'}] {name}: {note}")
        print("\n".join(report[-len(rows) - 1:]), flush=True)

    bad = bad_inputs(s, straight)
    section(f"bad inputs: {len(bad)} tried, {sum(ok for _, ok, _ in bad)} handled (one line "
            "'safedpo CMD: error: ...', exit 2, no traceback, a previous run intact)", bad)
    pipes = pipeline_inputs(s, straight)
    section(f"compare, pairs, eval, report, saferlhf: {len(pipes)} tried, "
            f"{sum(ok for _, ok, _ in pipes)} handled (one line, exit 2, no run it did not "
            "make changed)", pipes)
    section("SIGTERM", [("SIGTERM after 3 steps, then resume", *sigterm(s, straight))])
    section("NaN", [("--learning_rate 1e6 --optim adamw_torch --save_steps 1", *nan_run(s))])
    section("concurrent runs", [("two runs into one output_dir", *concurrent(s))])
    section("crafted files", crafted(s, straight))
    section("demo", [("SIGTERM during the demo's SFT stage", *demo_sigterm(work))])

    figures = kill_trials(s, straight, t_first, t_done, args.trials, random.Random(args.seed))
    kill_ok = (figures["corrupt_listed_checkpoints"] == 0 and figures["failed_resumes"] == 0
               and figures["visible_incomplete_step_dirs"] == 0
               and figures["resumed_equal_straight"] == figures["trials"])
    section(f"kill -9 at a random moment, then resume ({args.trials} trials)",
            [("figures", kill_ok, json.dumps(figures))])

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs ({cpu}), python "
          f"{platform.python_version()}, torch {torch.__version__}; "
          f"{time.time() - t_start:.0f} s in all")
    print(f"{'every check passed' if not failed else f'{failed} check(s) FAILED'}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
