"""Peak memory (and CPU time) of selected-token log-probs: forward + backward.

    python benchmarks/bench_logprobs_memory.py                 # memory, B=8 K=256 V=32000 bf16
    python benchmarks/bench_logprobs_memory.py --b 2 --k 64    # smaller
    python benchmarks/bench_logprobs_memory.py --time-only     # only the float32 timing

Variants, each run in its own process on the same random logits (B, K, V) that require grad:

* ``naive``: ``log_softmax(logits.float()).gather(...)`` - a float32 (B, K, V) log-softmax.
* ``rowwise``: the previous ``token_logps``: ``logsumexp(row.float())`` one batch row at a
  time; under autograd every row's float32 upcast is saved, B*K*V*4 bytes in all.
* ``new``: ``safedpo.logprobs.token_logps`` (custom autograd function; saves the logits in
  their own dtype, the targets and the (B, K) float32 logsumexp).

Reported per variant: bytes autograd saved for backward (all, and float32 only; measured with
``torch.autograd.graph.saved_tensors_hooks``, each storage counted once) and the peak memory
of forward + backward above what was held before it (the logits, targets and upstream
gradient): with CUDA ``torch.cuda.max_memory_allocated``, else the process's peak RSS
(``ru_maxrss``) minus its RSS before the call. The timing part runs float32 forward +
backward on the training benchmark's shapes (benchmarks/workload.py: vocab 2048, batch 8
pairs) in one process, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("naive", "rowwise", "new")
MiB = 1 << 20


def _fn(variant: str):
    import torch

    if variant == "naive":
        def naive(logits, targets):
            logp = torch.log_softmax(logits.float(), dim=-1)
            return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return naive
    if variant == "rowwise":
        def rowwise(logits, targets):  # the pre-fix safedpo.logprobs.token_logps
            picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
            lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
            return picked - lse
        return rowwise
    from safedpo.logprobs import token_logps
    return token_logps


def _rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil  # not Linux: psutil (the `bench` extra) is needed
        return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def measure(variant: str, b: int, k: int, v: int, dtype: str, device: str) -> dict:
    """One variant's saved bytes and peak memory; run in a fresh process."""
    import torch

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    logits = torch.randn(b, k, v, dtype=dt, device=device).requires_grad_(True)
    targets = torch.randint(0, v, (b, k), device=device)
    upstream = torch.randn(b, k, device=device)
    fn = _fn(variant)
    fn(logits[:1, :2].detach(), targets[:1, :2])  # warm-up: lazy init outside the peak

    saved = {}  # storage address -> (dtype, bytes): a storage saved twice counts once

    def pack(t):
        st = t.untyped_storage()
        saved[st.data_ptr()] = (t.dtype, st.nbytes())
        return t

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(logits, targets)
    (out * upstream).sum().backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _peak_rss_bytes() - before
    seconds = time.perf_counter() - t0
    return {"variant": variant, "saved": sum(n for _, n in saved.values()),
            "saved_f32": sum(n for d, n in saved.values() if d == torch.float32),
            "peak": peak, "seconds": seconds, "grad_dtype": str(logits.grad.dtype),
            "how": "cuda max_memory_allocated" if cuda else "peak RSS - RSS before"}


def time_float32(shapes, reps: int, threads: int) -> list[dict]:
    """Median seconds of float32 forward + backward per variant and shape, interleaved."""
    import torch

    torch.set_num_threads(threads)
    rows = []
    for b, k, v in shapes:
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(b, k, v, generator=g)
        targets = torch.randint(0, v, (b, k), generator=g)
        upstream = torch.randn(b, k, generator=g)
        fns = {name: _fn(name) for name in VARIANTS}
        times = {name: [] for name in VARIANTS}
        for rep in range(reps + 1):
            order = VARIANTS if rep % 2 else VARIANTS[::-1]
            for name in order:
                x = logits.clone().requires_grad_(True)
                t0 = time.perf_counter()
                (fns[name](x, targets) * upstream).sum().backward()
                dt = time.perf_counter() - t0
                if rep:  # the first round is warm-up
                    times[name].append(dt)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        rows.append({"shape": (b, k, v), **{f"{n}_ms": 1e3 * s for n, s in med.items()},
                     "new_vs_rowwise": med["new"] / med["rowwise"],
                     "new_vs_naive": med["new"] / med["naive"]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--b", type=int, default=8)
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--v", type=int, default=32000)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--reps", type=int, default=15, help="timing repetitions per variant")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the timing")
    p.add_argument("--time-only", action="store_true")
    p.add_argument("--memory-only", action="store_true")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.device is None:
        import torch
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.child:
        print(json.dumps(measure(a.child, a.b, a.k, a.v, a.dtype, a.device)))
        return 0

    if not a.time_only:
        gib_f32 = a.b * a.k * a.v * 4 / MiB
        print(f"memory: logits ({a.b}, {a.k}, {a.v}) {a.dtype} on {a.device}, forward + "
              f"backward; a float32 (B, K, V) tensor is {gib_f32:.0f} MiB")
        print(f"{'variant':<8} {'saved MiB':>10} {'saved f32 MiB':>14} {'peak MiB':>9} "
              f"{'seconds':>8}  grad dtype")
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        src = str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--child", variant, "--b", str(a.b), "--k",
                   str(a.k), "--v", str(a.v), "--dtype", a.dtype, "--device", a.device]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                          env=env).stdout.strip().splitlines()[-1])
            print(f"{variant:<8} {r['saved'] / MiB:>10.1f} {r['saved_f32'] / MiB:>14.1f} "
                  f"{r['peak'] / MiB:>9.1f} {r['seconds']:>8.2f}  {r['grad_dtype']}")
        print(f"(peak = {r['how']}; saved = storages passed to autograd's saved-tensor "
              "hooks, each once; the logits count though saved by reference)")

    if not a.memory_only:
        shapes = [(8, 192, 2048), (16, 65, 2048)]
        print(f"\ntiming: float32 forward + backward on CPU, {a.threads} thread(s), median of "
              f"{a.reps}")
        print(f"{'shape':<18} {'naive ms':>9} {'rowwise ms':>11} {'new ms':>8} "
              f"{'new/rowwise':>12} {'new/naive':>10}")
        for r in time_float32(shapes, a.reps, a.threads):
            print(f"{r['shape']!s:<18} {r['naive_ms']:>9.2f} {r['rowwise_ms']:>11.2f} "
                  f"{r['new_ms']:>8.2f} {r['new_vs_rowwise']:>12.3f} {r['new_vs_naive']:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
