"""Issue 23 (7): the helpfulness fixture, graded by readers of the answers, blind to the model.

The readers follow tests/fixtures/helpfulness/RUBRIC.md (for the fixture in the repository:
three helper sessions of the agent that built the study, one batch each; docs/real-model.md).

``blind``: takes the benign answers of three make-real policies on the unseen prompts
(runs/real/unseen/MODEL/generations.jsonl), shuffles them together and writes grading batches
(id, prompt, answer: no model name) plus a key (id -> model, prompt source and index). Each
batch shares OVERLAP answers with the next, so those are graded twice (agreement).

``collect``: reads the graders' files (id, grade in helpful / partial / unhelpful) and writes
tests/fixtures/helpfulness/benign_graded.jsonl: model, prompt source + index (the prompt
text is read from the benchmark package, not stored), the answer, its grade, and the second
grade where there is one. The lower-numbered batch's grade is the grade of an answer graded
twice.

    python scripts/make_helpfulness_fixture.py blind --out /tmp/grading
    python scripts/make_helpfulness_fixture.py collect --dir /tmp/grading
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from safedpo.data.prompt_sets import load_benchmark
from safedpo.evaluate.outcomes import read_rows

MODELS = ("reference", "safedpo", "dpo_harmless")
SOURCES = ("overrefusal", "benign-howto")
GRADES = ("helpful", "partial", "unhelpful")
FIXTURE = Path("tests/fixtures/helpfulness/benign_graded.jsonl")


def prompt_index() -> dict[str, tuple[str, int]]:
    """prompt text -> (benchmark, index in load_benchmark(benchmark))."""
    return {r["prompt"]: (name, i) for name in SOURCES
            for i, r in enumerate(load_benchmark(name))}


def blind(runs: Path, out: Path, n_batches: int, overlap: int, seed: int) -> None:
    where = prompt_index()
    items = []
    for m in MODELS:
        for r in read_rows(runs / m):
            if r.get("harmful") is False:
                source, index = where[r["prompt"]]
                items.append({"model": m, "source": source, "index": index,
                              "prompt": r["prompt"], "response": r["response"]})
    if n_batches < 2:
        raise SystemExit("--batches must be at least 2 (the overlap goes to another reader)")
    random.Random(seed).shuffle(items)
    for i, item in enumerate(items):
        item["id"] = i
    out.mkdir(parents=True, exist_ok=True)
    (out / "key.jsonl").write_text("".join(json.dumps(
        {k: it[k] for k in ("id", "model", "source", "index")}) + "\n" for it in items))
    size = -(-len(items) // n_batches)
    for b in range(n_batches):
        mine = items[b * size:(b + 1) * size]
        extra = items[((b + 1) % n_batches) * size:][:overlap]  # the next batch's first ones
        batch = [{"id": it["id"], "prompt": it["prompt"], "answer": it["response"]}
                 for it in mine + extra]
        (out / f"batch{b + 1}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in batch))
        print(f"{out}/batch{b + 1}.jsonl: {len(batch)} answers ({len(extra)} also in another)")


def collect(directory: Path) -> None:
    key = {k["id"]: k for k in read_rows(directory / "key.jsonl")}
    answers = {it["id"]: it["answer"] for f in sorted(directory.glob("batch*.jsonl"))
               for it in read_rows(f)}
    grades: dict[int, list[str]] = {}
    for f in sorted(directory.glob("grades*.jsonl"),
                    key=lambda f: int(f.stem.removeprefix("grades"))):
        for g in read_rows(f):
            if g["grade"] not in GRADES:
                raise SystemExit(f"{f}: id {g['id']}: grade {g['grade']!r} not in {GRADES}")
            grades.setdefault(g["id"], []).append(g["grade"])
    missing = sorted(set(key) - set(grades))
    if missing:
        raise SystemExit(f"{len(missing)} answers have no grade, e.g. ids {missing[:10]}")
    rows = []
    for i in sorted(key, key=lambda i: (MODELS.index(key[i]["model"]), key[i]["source"],
                                        key[i]["index"])):
        k = key[i]
        row = {"model": k["model"], "source": k["source"], "index": k["index"],
               "response": answers[i], "grade": grades[i][0]}
        if len(grades[i]) > 1:
            row["second_grade"] = grades[i][1]
        rows.append(row)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{FIXTURE}: {len(rows)} graded answers, "
          f"{sum('second_grade' in r for r in rows)} graded twice")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("blind")
    b.add_argument("--runs", default="runs/real/unseen")
    b.add_argument("--out", default="/tmp/grading")
    b.add_argument("--batches", type=int, default=3)
    b.add_argument("--overlap", type=int, default=20)
    b.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("collect")
    c.add_argument("--dir", default="/tmp/grading")
    args = p.parse_args()
    if args.command == "blind":
        blind(Path(args.runs), Path(args.out), args.batches, args.overlap, args.seed)
    else:
        collect(Path(args.dir))


if __name__ == "__main__":
    main()
