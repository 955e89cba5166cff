"""``trim_heap``: the trainer gives freed heap pages back to the OS after every optimizer step."""

import subprocess
import sys
import textwrap

import pytest

from safedpo.train.runtime import _malloc_trim

CHILD = textwrap.dedent("""
    import ctypes, ctypes.util
    from safedpo.train.runtime import trim_heap

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: every block below in the heap, as torch's

    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    blocks = [libc.malloc(1 << 20) for _ in range(120)]  # 120 blocks of 1 MiB, touched
    for b in blocks:
        ctypes.memset(b, 1, 1 << 20)
    for b in blocks[:-1]:  # the last one stays: the heap's top cannot shrink by itself
        libc.free(b)
    before = rss_mib()
    trim_heap()
    print(before, rss_mib())
""")


@pytest.mark.skipif(_malloc_trim() is None, reason="no glibc malloc_trim here")
def test_trim_heap_returns_freed_blocks_below_the_top_of_the_heap():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True).stdout.split()
    before, after = map(float, out)
    assert before - after > 100, (before, after)  # 119 MiB were free but resident


@pytest.mark.parametrize("on", [True, False])
def test_with_trim_heap_the_driver_trims_after_every_optimizer_step(tmp_path, monkeypatch, on):
    from helpers import make_pairs, tiny_config, tiny_model

    from safedpo.train import driver
    from safedpo.train.loop import train

    calls = []
    monkeypatch.setattr(driver, "trim_heap", lambda: calls.append(1))
    train(tiny_config(tmp_path, tiny_model(tmp_path), max_steps=3, trim_heap=on,
                      per_device_train_batch_size=2), make_pairs())
    assert len(calls) == (3 if on else 0)
