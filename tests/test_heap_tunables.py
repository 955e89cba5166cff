"""safedpo.heap: the command restarts once with glibc's small-block caches off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import safedpo.cli as cli
from safedpo.heap import OPT_OUT, TUNABLES, is_glibc, heap_env, heap_tuned

glibc_only = pytest.mark.skipif(not is_glibc(), reason="glibc only")


def test_heap_env_adds_the_tunables():
    assert heap_env({"A": "1"}, glibc=True) == {"A": "1", "GLIBC_TUNABLES": TUNABLES}
    # the user's other tunables stay, ours are appended
    env = heap_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, glibc=True)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1:" + TUNABLES
    assert heap_tuned(env) and not heap_tuned({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})


@pytest.mark.parametrize("environ", [
    {"GLIBC_TUNABLES": TUNABLES},                              # already restarted: no loop
    {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=3"},         # the user's choice stands
    {"GLIBC_TUNABLES": "glibc.malloc.mxfast=64"},
    {OPT_OUT: "0"}, {OPT_OUT: "off"}, {OPT_OUT: "false"},
])
def test_heap_env_leaves_alone(environ):
    assert heap_env(environ, glibc=True) is None


def test_heap_env_not_glibc():
    assert heap_env({}, glibc=False) is None


def test_main_restarts_only_from_the_command_line(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "reexec_with_heap_tunables", lambda: calls.append(1))
    monkeypatch.setattr(sys, "argv", ["safedpo"])
    cli.main()
    cli.main([])
    assert calls == [1]


# In the child: 100 small blocks freed; tcache keeps 7 and fastbins the rest, unless both are
# off. mallinfo2().fsmblks: bytes in fastbins. Then the environment the child ended up with.
CHILD = """
import ctypes, os
from safedpo.heap import reexec_with_heap_tunables
reexec_with_heap_tunables()
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MI
blocks = [libc.malloc(40) for _ in range(100)]
keep = libc.malloc(40)  # keeps the freed blocks away from the heap's top
for b in blocks:
    libc.free(b)
print(libc.mallinfo2().fsmblks, os.environ.get("GLIBC_TUNABLES"), os.getpid())
"""


def _child(**env) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD], env={**base, **env},
                            stdout=subprocess.PIPE, text=True)
    out = proc.communicate()[0].split()
    assert proc.returncode == 0
    assert int(out[2]) == proc.pid  # restarted in place: a launcher sees the same process
    return int(out[0]), out[1]


@glibc_only
def test_restart_switches_the_caches_off():
    fast, tunables = _child()
    assert tunables == TUNABLES and fast == 0
    fast, tunables = _child(**{OPT_OUT: "0"})
    assert tunables == "None" and fast > 0  # glibc's defaults: freed small blocks in fastbins


def test_a_failed_restart_goes_on_and_says_so(monkeypatch, capsys):
    import safedpo.heap as heap

    def fail(*args):
        raise OSError("no exec here")

    monkeypatch.setattr(heap, "heap_env", lambda: {"GLIBC_TUNABLES": TUNABLES})
    monkeypatch.setattr(heap.os, "execve", fail)
    heap.reexec_with_heap_tunables()
    assert "could not restart" in capsys.readouterr().err
