"""The C heap a training run keeps resident, on Linux with glibc (no torch imported here).

A training step allocates and frees many activation tensors of 0.1-4 MiB, interleaved with
small objects (tensor and autograd metadata). glibc parks freed small blocks in its per-thread
cache (tcache) and fastbins, where they still count as in use: they sit between the large
free blocks and keep them from merging, so the next step's activations do not fit the holes
and the heap grows. On SmolLM2-135M + LoRA (docs/performance.md) the heap held about 1.6 GiB
for 0.9 GiB of live blocks; with both caches off it holds about 1.15 GiB, at the same speed.

Both caches can only be switched off when the process starts (``GLIBC_TUNABLES``), so the
``safedpo`` command re-executes itself once with them off (:func:`reexec_with_heap_tunables`,
before torch is imported: about 0.1 s). The same process id, arguments and environment
otherwise; a launcher such as ``accelerate launch`` sees nothing change. Not done when:

* the C library is not glibc (macOS, Windows, musl): nothing to tune;
* ``GLIBC_TUNABLES`` already sets ``tcache_count`` or ``mxfast`` (the user's choice stands;
  other tunables of the user are kept and ours appended);
* ``SAFEDPO_HEAP_TUNING=0`` (the opt-out, for comparing with glibc's defaults).

Python scripts that call ``safedpo.train.loop.train`` themselves can call
:func:`reexec_with_heap_tunables` first thing, or set the variable in their launcher.
"""

from __future__ import annotations

import os
import platform
import sys

# tcache off (no per-thread cache of small free blocks) and fastbins off (small free blocks
# merge with their neighbours at once).
TUNABLES = "glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0"
OPT_OUT = "SAFEDPO_HEAP_TUNING"


def is_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def heap_env(environ: dict[str, str] | None = None, glibc: bool | None = None
             ) -> dict[str, str] | None:
    """The environment to run with (``environ`` plus our tunables), or None when there is
    nothing to change: not glibc, opted out, or the tunables are already set."""
    env = dict(os.environ if environ is None else environ)
    if not (is_glibc() if glibc is None else glibc):
        return None
    if env.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    current = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.tcache_count=" in current or "glibc.malloc.mxfast=" in current:
        return None
    env["GLIBC_TUNABLES"] = f"{current}:{TUNABLES}" if current else TUNABLES
    return env


def reexec_with_heap_tunables() -> None:
    """Re-execute this process (same interpreter, same ``sys.orig_argv``) with
    :data:`TUNABLES` in ``GLIBC_TUNABLES`` when :func:`heap_env` says so; else return."""
    env = heap_env()
    argv = getattr(sys, "orig_argv", None)
    if env is None or not sys.executable or not argv:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError as e:  # the run goes on with glibc's defaults, and says so
        print(f"safedpo: could not restart with {TUNABLES} ({e}); glibc's default heap",
              file=sys.stderr)


def heap_tuned(environ: dict[str, str] | None = None) -> bool:
    """Whether this process runs with our tunables (train_summary.json records it)."""
    env = os.environ if environ is None else environ
    return TUNABLES in env.get("GLIBC_TUNABLES", "")
