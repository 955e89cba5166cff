"""The lock file (requirements-lock.txt): write it from an environment, or check one against it.

    python scripts/check_lock.py LOCK            # exit 1 unless every locked package is
                                                 # installed at exactly its locked version
    python scripts/check_lock.py --freeze LOCK   # write LOCK from this interpreter's packages

The lock is a pip constraints file (``name==version`` lines) that the Makefile passes to every
install. torch and its CUDA wheels are left out on purpose: the Makefile pins torch on its own
line (TORCH=...), so that CUDA users can install their build of it against the same lock.
Standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

# torch is pinned by the Makefile (overridable); the rest are CUDA builds' own packages.
NOT_LOCKED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|safedpo)$")


def normalize(name: str) -> str:
    """PEP 503 name: ``PyYAML`` and ``pyyaml``, ``typing_extensions`` and ``typing-extensions``
    are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


def read_lock(path: Path) -> dict[str, str]:
    """{normalized name: version} of a lock file; a line that is not ``name==version`` (or a
    comment) is an error naming its line."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", text)
        if m is None:
            raise SystemExit(f"{path}:{number}: expected 'name==version', got {line!r}")
        pins[normalize(m.group(1))] = m.group(2)
    return pins


def differences(pins: dict[str, str], have: dict[str, str]) -> list[str]:
    """One line per locked package that is missing or at another version."""
    out = []
    for name, version in sorted(pins.items()):
        got = have.get(name)
        if got != version:
            out.append(f"{name}: locked {version}, installed {got or 'nothing'}")
    return out


def freeze(path: Path) -> None:
    have = {n: v for n, v in sorted(installed().items()) if not NOT_LOCKED.match(n)}
    lines = ["# The tested environment: every package `make test` installs, torch aside (the",
             "# Makefile pins it). Made by `make lock` (scripts/check_lock.py --freeze) from",
             "# pyproject.toml's ranges; refresh it only together with a full `make test` on it.",
             f"# Python {sys.version_info.major}.{sys.version_info.minor}.",
             *(f"{n}=={v}" for n, v in have.items())]
    path.write_text("\n".join(lines) + "\n")
    print(f"{path}: {len(have)} packages")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--freeze", action="store_true",
                        help="write LOCK from the installed packages instead of checking")
    args = parser.parse_args(argv)
    if args.freeze:
        freeze(args.lock)
        return 0
    wrong = differences(read_lock(args.lock), installed())
    if wrong:
        print(f"the environment differs from {args.lock} (remove the venv, e.g. `make clean`, "
              "and run set-up again):\n  " + "\n  ".join(wrong), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
