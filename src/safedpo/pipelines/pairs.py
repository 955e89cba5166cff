"""``safedpo pairs``: on-policy safety preference pairs from any instruct model.

Per prompt the model answers twice: once plainly, sampled (``response_0``), and once under a
safety system prompt (``response_1``, context distillation: the model's own refusals become the safe
answers it learns from). Each answer is judged for safety and ranked for helpfulness, and the
pair is written in the PKU-SafeRLHF v1 schema, so every view, loss and baseline reads it
unchanged.

Judges: a cost model (``cost:PATH``; cost > 0 = unsafe) and a reward model (``reward:PATH``;
higher = more helpful) when given; otherwise the three-outcome judge
(``safedpo.evaluate.judge``). The default rule, per answer:

- safety: on a harmful prompt, compliance is UNSAFE, an explicit refusal SAFE, and a
  non-answer UNDECIDED (it may hide anything, and it is not an answer to teach); on a benign
  prompt every answer is safe;
- helpfulness: compliance > refusal > non-answer (a coherent refusal at least tells the user
  where they stand).

A pair is written when both answers' safety is decided and their helpfulness differs
(``better_response_id``: the more helpful; ``safer_response_id``: the safe one when exactly one
is, else the less helpful one, e.g. a refusal of a benign prompt, or the lower cost with a cost
model). Every other pair is counted under its reason and dropped, never guessed.

Under the system prompt the first answer is greedy; a harmful prompt whose answer is not an
explicit refusal is then sampled, up to ``safety_tries`` answers in all, until one is (the
greedy answer is kept when none is); the summary counts on which try each refusal came.

``refusal_prefix`` (e.g. "I'm sorry, but"): a small model may rarely refuse even under the
system prompt (SmolLM2-135M: 4 of 48 AdvBench prompts). Then the safety answer of EVERY
prompt is the model's own continuation of that opening under the system prompt (greedy), cut
after its first sentence ("I'm sorry, but I'm unable to assist with that."): the safe answer
of a harmful prompt, and on a benign prompt the less helpful of two safe answers, so SafeDPO
(which keeps the helpfulness order of two safe answers) learns to answer it, while
DPO-HARMLESS (chosen = the safer) learns to refuse it too.

Generation is batched and resumable like ``safedpo eval`` (answers are appended to
``plain.jsonl`` and ``safety-T.jsonl`` (try T) one batch at a time; a crash loses at most one
batch).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from safedpo.evaluate.judge import OUTCOMES, classify
from safedpo.models.prompts import SAFETY_SYSTEM_PROMPT

HELPFULNESS_RANK = {"compliance": 2, "refusal": 1, "nonanswer": 0}
DROP_REASONS = ("identical answers", "non-answer to a harmful prompt", "equal helpfulness",
                "benign prompt, the better answer does not answer",
                "refusal prefix continued without refusing")


def judge_answer(outcome: str, harmful: bool, cost: float | None = None) -> bool | None:
    """UNSAFE flag of one answer: the cost model's (cost > 0) when given, else the default rule
    (harmful prompt: compliance unsafe, refusal safe, non-answer undecided -> None)."""
    if cost is not None:
        return cost > 0
    if not harmful:
        return False
    return {"compliance": True, "refusal": False, "nonanswer": None}[outcome]


def label_pair(answers: tuple[str, str], outcomes: tuple[str, str], harmful: bool,
               costs: tuple[float, float] | None = None,
               rewards: tuple[float, float] | None = None) -> tuple[dict | None, str]:
    """-> (the PKU-SafeRLHF v1 labels of the pair, "kept") or (None, the reason it is dropped).

    Labels: better_response_id, safer_response_id, is_response_{0,1}_safe. See the module
    docstring for the rule."""
    if answers[0].strip() == answers[1].strip():
        return None, "identical answers"
    unsafe = [judge_answer(o, harmful, c) for o, c in zip(outcomes, costs or (None, None))]
    if None in unsafe:
        return None, "non-answer to a harmful prompt"
    helpful = rewards if rewards is not None else tuple(HELPFULNESS_RANK[o] for o in outcomes)
    if helpful[0] == helpful[1]:
        return None, "equal helpfulness"
    better = 0 if helpful[0] > helpful[1] else 1
    if not harmful and outcomes[better] != "compliance":
        # A refusal or a non-answer is never the answer to teach for a benign prompt (e.g. a
        # non-answer plain reply against the safety prompt's refusal): no pair at all.
        return None, "benign prompt, the better answer does not answer"
    if unsafe[0] != unsafe[1]:
        safer = 0 if not unsafe[0] else 1
    elif costs is not None and costs[0] != costs[1]:
        safer = 0 if costs[0] < costs[1] else 1
    else:  # both equally safe: the more cautious (less helpful) answer
        safer = 1 - better
    return {"better_response_id": better, "safer_response_id": safer,
            "is_response_0_safe": not unsafe[0], "is_response_1_safe": not unsafe[1]}, "kept"


def prefix_refuses(prompt: str, answer: str, prefix: str) -> bool:
    """Whether an answer forced to open with ``prefix`` ("I'm sorry, but") refuses: the
    opening is ours, not the model's, so only what the model wrote after it is judged
    ("I'm sorry, but here are the steps: 1." does not refuse)."""
    rest = answer[len(prefix):] if answer.startswith(prefix) else answer
    return classify(prompt, rest.strip()) == "refusal"


def first_sentence(text: str) -> str:
    """``text`` up to the end of its first sentence (., ! or ? then a space or the end);
    the whole text when it has no sentence end."""
    m = re.search(r"[.!?](?=\s|$)", text)
    return text[:m.end()] if m else text


def pku_row(prompt: str, answers: tuple[str, str], labels: dict, source: str,
            categories: list[str] | str | None = None) -> dict:
    """One row with exactly the PKU-SafeRLHF v1 columns. Severity is unknown for generated
    answers: null (the loader reads null as "no value"). Harm categories: the prompt's
    (``categories``, e.g. StrongREJECT's or AdvBench's): an UNSAFE answer is marked with each
    of them ({name: true}), a safe one with none ({name: false}); null without categories.
    So per-category margins (``delta_by_category``, adaptive Delta) see the prompt's
    category on the unsafe answer of a pair."""
    names = [categories] if isinstance(categories, str) else list(categories or [])
    row = {"prompt": prompt, "response_0": answers[0], "response_1": answers[1],
           "prompt_source": source}
    for j in (0, 1):
        unsafe = not labels[f"is_response_{j}_safe"]
        row[f"response_{j}_source"] = ("plain", "safety-system-prompt")[j]
        row[f"is_response_{j}_safe"] = labels[f"is_response_{j}_safe"]
        row[f"response_{j}_harm_category"] = ({name: unsafe for name in names} if names
                                              else None)
        row[f"response_{j}_severity_level"] = None
        row[f"response_{j}_sha256"] = hashlib.sha256(answers[j].encode("utf-8")).hexdigest()
    row["better_response_id"] = labels["better_response_id"]
    row["safer_response_id"] = labels["safer_response_id"]
    return row


def _records(sources: list[str], max_prompts: int | None,
             holdout: str | None) -> tuple[list[dict], int]:
    """Prompt records of every source (the first ``max_prompts`` of each), without the prompts
    of ``holdout`` (the evaluation prompts). -> (records, number held out)."""
    # heavy (torch, through tokenization): imported when pairs are made, so --help stays fast
    from safedpo.evaluate.generate import load_prompt_records

    held = {r["prompt"].strip().lower() for r in load_prompt_records(holdout)} if holdout else set()
    records, seen, n_held = [], set(), 0
    for source in sources:
        kept = []
        for rec in load_prompt_records(source):
            key = rec["prompt"].strip().lower()
            if key in held:
                n_held += 1
            elif key not in seen and len(kept) < (max_prompts or float("inf")):
                seen.add(key)
                kept.append({**rec, "source": source})
        records += kept
    unknown = [r["prompt"] for r in records if r["harmful"] is None]
    if unknown:
        raise ValueError(f"pairs needs prompts marked harmful or benign (a 'harmful' column, or "
                         f"a benchmark name); not marked: {unknown[0]!r}")
    return records, n_held


def _check_settings(out: Path, settings: dict, overwrite: bool) -> None:
    """A resumed run must have the settings of the answers already there."""
    path = out / "pairs_config.json"
    if overwrite:
        for stale in [out / n for n in ("plain.jsonl", "pairs.jsonl", "dropped.jsonl",
                                          "answers.jsonl")] + list(out.glob("safety-*.jsonl")):
            stale.unlink(missing_ok=True)
    elif path.exists():
        old = json.loads(path.read_text())
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
        if diff:
            raise ValueError(f"{out} holds answers made with other settings ({'; '.join(diff)}); "
                             "use another output directory or --overwrite")
    path.write_text(json.dumps(settings, indent=2) + "\n")


def make_pairs(model, sources: list[str], out_dir: str | Path, *, max_prompts: int | None = None,
               holdout: str | None = None, system_prompt: str | None = None,
               scorers: list[str] | None = None, max_new_tokens: int = 128,
               max_prompt_length: int | None = None,
               temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
               batch_size: int = 8, safety_tries: int = 4, refusal_prefix: str | None = None,
               prompt_template: str | None = None, dtype=None, tokenizer=None,
               overwrite: bool = False, progress: bool = True) -> dict:
    """Generate, judge and label pairs; write pairs.jsonl (PKU-SafeRLHF v1), dropped.jsonl (the
    pairs the rule cannot order, with the reason), answers.jsonl (every answer with its
    outcome) and pairs_summary.json (every count). Returns the summary. ``scorers``: optional
    "cost:PATH" / "reward:PATH" (see the module docstring).
    ``model``: as for ``safedpo eval`` (a path, or a loaded model with ``tokenizer``).
    ``safety_tries``: answers under the system prompt for a harmful prompt (greedy, then
    sampled) until one is an explicit refusal (the greedy one is kept when none is).
    ``refusal_prefix``: every safety answer opens with it (greedy, first sentence; see the
    module docstring); ``safety_tries`` is then unused. Resumes:
    answers already in plain.jsonl / safety-T.jsonl are not generated again."""
    # heavy (torch, through tokenization): imported when pairs are made, so --help stays fast
    from safedpo.evaluate.scorers import check_scorer_specs
    from safedpo.train.checkpoint import lock_output_dir

    specs = list(scorers or [])
    bad = [s for s in specs if s.partition(":")[0] not in ("cost", "reward") or ":" not in s]
    if bad:
        raise ValueError(f"pairs takes only cost:PATH and reward:PATH scorers, got {bad}")
    check_scorer_specs(specs)
    if safety_tries < 1:
        raise ValueError(f"safety_tries must be >= 1, got {safety_tries}")
    system_prompt = system_prompt or SAFETY_SYSTEM_PROMPT
    out = Path(out_dir)
    # One run per output dir (two would interleave their answers): the run lock `train` takes.
    lock = lock_output_dir(out)  # ConfigError (a ValueError) when another run holds it
    try:
        return _make_pairs(model, sources, out, specs, max_prompts=max_prompts, holdout=holdout,
                           system_prompt=system_prompt, max_new_tokens=max_new_tokens,
                           max_prompt_length=max_prompt_length,
                           temperature=temperature, top_p=top_p, seed=seed,
                           batch_size=batch_size, safety_tries=safety_tries,
                           refusal_prefix=refusal_prefix, prompt_template=prompt_template,
                           dtype=dtype, tokenizer=tokenizer, overwrite=overwrite,
                           progress=progress)
    finally:
        lock.close()


def _make_pairs(model, sources: list[str], out: Path, specs: list[str], *, max_prompts,
                holdout, system_prompt, max_new_tokens, max_prompt_length, temperature, top_p,
                seed, batch_size,
                safety_tries, refusal_prefix, prompt_template, dtype, tokenizer, overwrite,
                progress) -> dict:
    # heavy (torch, through tokenization): imported when pairs are made, so --help stays fast
    from safedpo.evaluate.generate import generate_to_file, write_jsonl
    from safedpo.evaluate.runner import load_policy
    from safedpo.evaluate.scorers import build_scorers

    records, n_held = _records(sources, max_prompts, holdout)
    policy, tok, template, name = load_policy(model, tokenizer, prompt_template, dtype)
    settings = {"model": name, "prompts": "+".join(sources), "n_prompts": len(records),
                "prompt_template": template, "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p, "seed": seed, "batch_size": batch_size,
                "system_prompt": system_prompt, "holdout": holdout, "scorers": specs,
                "safety_tries": safety_tries, "refusal_prefix": refusal_prefix,
                **({"max_prompt_length": max_prompt_length} if max_prompt_length else {})}
    _check_settings(out, settings, overwrite)
    gen = {"prompt_template": template, "max_new_tokens": max_new_tokens,
           "max_prompt_length": max_prompt_length, "do_sample": True,
           "temperature": temperature, "top_p": top_p, "batch_size": batch_size,
           "progress": progress}
    prompts = [r["prompt"] for r in records]
    plain = generate_to_file(policy, tok, records, out / "plain.jsonl", seed=seed, **gen)
    # Up to safety_tries answers under the system prompt for a harmful prompt, until one is an
    # explicit refusal (the model's own refusal is the answer to learn); one for a benign one.
    # Try 1 is greedy (SmolLM2-135M refuses more often greedily than in one sample), the
    # others sampled.
    safe, tries = [None] * len(records), [0] * len(records)
    if refusal_prefix:
        rows = generate_to_file(policy, tok, records, out / "safety-1.jsonl",
                                system_prompt=system_prompt, response_prefix=refusal_prefix,
                                **{**gen, "do_sample": False})
        safe, tries = [first_sentence(r["response"]) for r in rows], [1] * len(records)
    else:
        refused = [False] * len(records)  # each answer is judged once, when it comes
        for t in range(1, safety_tries + 1):
            todo = [i for i in range(len(records))
                    if safe[i] is None or (records[i]["harmful"] and not refused[i])]
            if not todo:
                break
            rows = generate_to_file(policy, tok, [records[i] for i in todo],
                                    out / f"safety-{t}.jsonl", seed=seed + t,
                                    system_prompt=system_prompt, **{**gen, "do_sample": t > 1})
            for i, row in zip(todo, rows, strict=True):
                is_refusal = classify(prompts[i], row["response"]) == "refusal"
                if safe[i] is None or is_refusal:
                    safe[i], tries[i], refused[i] = row["response"], t, is_refusal
    answers = [[r["response"] for r in plain], safe]
    del policy
    scores = {}
    for scorer in build_scorers(specs, batch_size=batch_size, dtype=dtype, progress=progress):
        scores[scorer.kind] = [scorer.score(prompts, a) for a in answers]  # [plain, safety]
    outcomes = [[classify(p, a) for p, a in zip(prompts, col)] for col in answers]
    continued = [prefix_refuses(p, a, refusal_prefix) if refusal_prefix else True
                 for p, a in zip(prompts, answers[1])]
    kept, dropped = [], []
    counts = {side: {h: Counter() for h in ("harmful", "benign")} for side in ("plain", "safety")}
    reasons = {h: Counter() for h in ("harmful", "benign")}
    for i, rec in enumerate(records):
        h = "harmful" if rec["harmful"] else "benign"
        pair = (answers[0][i], answers[1][i])
        outs = (outcomes[0][i], outcomes[1][i])
        for side, o in zip(("plain", "safety"), outs):
            counts[side][h][o] += 1
        pick = {k: (v[0][i], v[1][i]) for k, v in scores.items()}
        if not continued[i]:
            labels, reason = None, "refusal prefix continued without refusing"
        else:
            labels, reason = label_pair(pair, outs, rec["harmful"],
                                        costs=pick.get("cost"), rewards=pick.get("reward"))
        reasons[h][reason] += 1
        if labels is None:
            dropped.append({"prompt": rec["prompt"], "harmful": rec["harmful"], "reason": reason,
                            "outcomes": list(outs), "responses": list(pair)})
        else:
            kept.append(pku_row(rec["prompt"], pair, labels, rec["source"],
                                rec.get("category") if rec["harmful"] else None))
    write_jsonl(out / "pairs.jsonl", kept)
    write_jsonl(out / "dropped.jsonl", dropped)
    # Every answer with its outcome: on held-out prompts, the --answers of `safedpo eval`.
    write_jsonl(out / "answers.jsonl", [
        {"prompt": rec["prompt"], "harmful": rec["harmful"], "side": side,
         "response": answers[j][i], "label": outcomes[j][i]}
        for j, side in enumerate(("plain", "safety")) for i, rec in enumerate(records)])
    summary = {"model": name, "sources": sources, "holdout": holdout,
               "held_out_prompts_removed": n_held, "n_prompts": len(records),
               "n_pairs": len(kept), "n_dropped": len(dropped),
               "judges": {"safety": "cost model" if "cost" in scores else "default rule",
                          "helpfulness": "reward model" if "reward" in scores else "default rule"},
               "outcomes": {side: {h: {o: c[o] for o in OUTCOMES} for h, c in by.items()}
                            for side, by in counts.items()},
               "pairs": {h: {r: c[r] for r in ("kept",) + DROP_REASONS}
                         for h, c in reasons.items()},
               # harmful prompts: the try whose sample is the safety answer (a refusal when
               # one was found within safety_tries)
               "refusal_prefix": refusal_prefix,
               "safety_tries": {"tries": 1 if refusal_prefix else safety_tries,
                                "refusal_on_try": dict(sorted(Counter(
                   t for t, rec, o in zip(tries, records, outcomes[1])
                   if rec["harmful"] and o == "refusal").items()))},
               "system_prompt": system_prompt}
    (out / "pairs_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
