"""Issue 23 (5): the unseen prompt set of the real-model study, written as a prompt jsonl.

Harmful prompts from sources `make real` never trained on (HarmBench, StrongREJECT, spread
over each file), every over-refusal question and some benign how-to questions that no
training pair used (the prompts of runs/real/pairs/plain.jsonl are the training prompts).
Each record's ``category`` is [SOURCE] or [SOURCE, "SOURCE: CATEGORY"], so the evaluation's
per-category table is per source and per StrongREJECT category at once.

    python scripts/real_unseen_prompts.py [--pairs runs/real/pairs] [--out FILE]

With ``--benign-answers EVAL_DIR`` it writes instead the reference's own answers to the benign
prompts of that evaluation as an ``--answers`` file ({prompt, response, label}), for the
judge-free log-prob shift of each policy.

    python scripts/real_unseen_prompts.py --benign-answers runs/real/unseen/reference --out FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safedpo.data.prompt_sets import load_benchmark
from safedpo.evaluate.outcomes import read_rows

# (benchmark spec, keep its own category as a sub-category?)
HARMFUL = (("harmbench:100", False), ("strongreject:120", True))
BENIGN = (("overrefusal", False), ("benign-howto", False))
BENIGN_HOWTO_N = 16  # unused how-to questions, spread: with over-refusal >= 100 benign prompts


def build(trained: set[str]) -> list[dict]:
    out = []
    for spec, sub in HARMFUL + BENIGN:
        name = spec.partition(":")[0]
        records = [r for r in load_benchmark(spec) if r["prompt"] not in trained]
        if name == "benign-howto":
            records = [records[i * len(records) // BENIGN_HOWTO_N] for i in range(BENIGN_HOWTO_N)]
        for r in records:
            category = [name] + ([f"{name}: {r['category']}"] if sub else [])
            out.append({"prompt": r["prompt"], "harmful": r["harmful"], "category": category})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default="runs/real/pairs", help="safedpo pairs output of make real")
    p.add_argument("--out", default="runs/real/unseen/prompts.jsonl")
    p.add_argument("--benign-answers", metavar="EVAL_DIR",
                   help="write the benign answers of this evaluation as an --answers file")
    args = p.parse_args()
    if args.benign_answers:
        rows = read_rows(args.benign_answers)
        answers = [{"prompt": r["prompt"], "response": r["response"], "label": "reference-benign"}
                   for r in rows if r.get("harmful") is False]
        Path(args.out).write_text("".join(json.dumps(a) + "\n" for a in answers))
        print(f"{args.out}: {len(answers)} benign answers of {args.benign_answers}")
        return
    plain = Path(args.pairs) / "plain.jsonl"
    trained = {json.loads(line)["prompt"] for line in plain.read_text().splitlines() if line}
    records = build(trained)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records))
    counts: dict[str, int] = {}
    for r in records:
        counts[r["category"][0]] = counts.get(r["category"][0], 0) + 1
    print(f"{args.out}: {len(records)} prompts never trained on {counts}")


if __name__ == "__main__":
    main()
