"""Outcome tables of saved answers, judged again with the current judge.

A study's table is built from the answers an evaluation wrote (``generations.jsonl``: prompt,
response, harmful, category) and the three-outcome judge in the repository
(``safedpo.evaluate.judge.classify``, a pure function of prompt and answer), so a table always
uses today's judge, whatever judge the evaluation ran with. The rates are
``safedpo.evaluate.metrics.outcome_rates``' (Wilson intervals), named flat for a study's table;
two models are compared with McNemar's exact test on the same prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from safedpo.data.sources import read_table
from safedpo.evaluate import metrics as M
from safedpo.evaluate.generate import read_generations
from safedpo.evaluate.judge import OUTCOMES, classify
from safedpo.evaluate.metrics import mcnemar, rate_estimate

# study key -> (prompt group of metrics.outcome_rates, outcome)
RATES = {"harmful_refusal": ("harmful", "refusal"),
         "harmful_compliance": ("harmful", "compliance"),
         "harmful_nonanswer": ("harmful", "nonanswer"), "over_refusal": ("benign", "refusal"),
         "benign_answered": ("benign", "compliance"), "benign_nonanswer": ("benign", "nonanswer")}


def read_rows(path: str | Path) -> list[dict]:
    """The rows of an evaluation (its directory or its generations.jsonl: a finished one, read
    and checked by ``read_generations``) or of any other jsonl file (the data loader's
    reader); a bad row is an error naming the file and row."""
    path = Path(path)
    answers = path / "generations.jsonl" if path.is_dir() else path
    if answers.name == "generations.jsonl":
        if not answers.is_file():
            raise FileNotFoundError(f"no evaluation here: {answers} is missing")
        return read_generations(answers, complete=True)
    return [record for _, _, record in read_table(path).records]


def judge(rows: Sequence[dict]) -> list[str]:
    """The current judge's outcome ('refusal', 'compliance', 'nonanswer') of each row."""
    return [classify(r["prompt"], r["response"]) for r in rows]


def categories(row: dict) -> list[str]:
    """A row's categories as a list (a str, a list of str, or none)."""
    cat = row.get("category")
    return [] if cat is None else [cat] if isinstance(cat, str) else list(cat)


def judged_rates(rows: Sequence[dict], outcomes: Sequence[str]) -> dict:
    """The RATES of these rows, from ``metrics.outcome_rates`` (Wilson intervals); a group
    without prompts (no benign rows, say) is left out."""
    rates = M.outcome_rates([OUTCOMES.index(o) for o in outcomes],
                            [r.get("harmful") for r in rows], [None] * len(rows), OUTCOMES)
    return {key: rates[group][outcome] for key, (group, outcome) in RATES.items()
            if rates[group] is not None}


def rates_by_category(rows: Sequence[dict], outcomes: Sequence[str]) -> dict[str, dict]:
    """{category: judged_rates of the rows in it}, categories in order of first appearance (a
    row with several categories counts in each)."""
    names = list(dict.fromkeys(c for r in rows for c in categories(r)))
    out = {}
    for name in names:
        idx = [i for i, r in enumerate(rows) if name in categories(r)]
        out[name] = judged_rates([rows[i] for i in idx], [outcomes[i] for i in idx])
    return out


def paired_refusals(rows: Sequence[dict], first: Sequence[str], second: Sequence[str],
                    other_rows: Sequence[dict] | None = None) -> dict:
    """McNemar's exact test of two models' refusals on the same prompts, harmful and benign
    apart: {"harmful_refusal": ..., "benign_refusal": ...}. ``other_rows`` (the second model's
    rows) must hold the same prompts in the same order."""
    if not len(rows) == len(first) == len(second):
        raise ValueError(f"paired_refusals: {len(rows)} rows but {len(first)} and {len(second)} "
                         "outcomes")
    if other_rows is not None and [r["prompt"] for r in rows] != [r["prompt"] for r in
                                                                 other_rows]:
        raise ValueError("paired_refusals: the two models' answers are not to the same prompts "
                         "in the same order")
    out = {}
    for key, want in (("harmful_refusal", True), ("benign_refusal", False)):
        idx = [i for i, r in enumerate(rows) if r.get("harmful") is want]
        if idx:
            out[key] = mcnemar([first[i] == "refusal" for i in idx],
                               [second[i] == "refusal" for i in idx])
    return out


def fmt(est: dict) -> str:
    """'67.0 [53.1, 78.4]': a rate and its interval in percent."""
    return f"{100 * est['value']:.1f} [{100 * est['ci_low']:.1f}, {100 * est['ci_high']:.1f}]"


def markdown_table(first_header: str, rows: Iterable[tuple[str, dict]],
                   keys: Sequence[str]) -> list[str]:
    """A Markdown table: one line per (name, rates), a column per key ('-' where missing)."""
    lines = [f"| {first_header} | " + " | ".join(k.replace("_", " ") + " %" for k in keys)
             + " |", "|---|" + "---|" * len(keys)]
    for name, rates in rows:
        lines.append(f"| {name} | " + " | ".join(fmt(rates[k]) if k in rates else "-"
                                                  for k in keys) + " |")
    return lines


GRADES = ("helpful", "partial", "unhelpful")


def grade_rates(graded: Sequence[dict], reference: str = "reference") -> dict:
    """Helpfulness graded by reading: rows {model, source, index, response, grade}. Per model,
    the share of each grade (Wilson), the share graded helpful or partial ('useful'), the mean
    answer length in words and, for each model but ``reference``, McNemar on 'helpful' and on
    'useful' against ``reference`` on the prompts graded for both."""
    by_model: dict[str, dict] = {}
    for g in graded:
        items = by_model.setdefault(g["model"], {})
        key = (g["source"], g["index"])
        if key in items:
            raise ValueError(f"{g['model']}: prompt {key} graded in two rows")
        items[key] = g
    out: dict = {}
    for m, items in by_model.items():
        rows = list(items.values())
        out[m] = {grade: rate_estimate([g["grade"] == grade for g in rows]) for grade in GRADES}
        out[m]["useful"] = rate_estimate([g["grade"] != "unhelpful" for g in rows])
        out[m]["words"] = sum(len(g["response"].split()) for g in rows) / len(rows)
        if m != reference and reference in by_model:
            ref = by_model[reference]
            common = [k for k in items if k in ref]
            for name, good in (("helpful", ("helpful",)), ("useful", ("helpful", "partial"))):
                out[m][f"{name}_vs_reference"] = mcnemar(
                    [items[k]["grade"] in good for k in common],
                    [ref[k]["grade"] in good for k in common])
    return out


def grade_agreement(graded: Sequence[dict]) -> dict:
    """Agreement on the answers graded twice (``grade`` and ``second_grade``, each by another
    reader): the share graded alike and Cohen's kappa, (p_o - p_e) / (1 - p_e), p_e from the
    shares of the first and of the second grades (pooled over pairs of readers when more than
    two readers share the work)."""
    pairs = [(g["grade"], g["second_grade"]) for g in graded if "second_grade" in g]
    if not pairs:
        raise ValueError("no answer was graded twice")
    n = len(pairs)
    p_o = sum(a == b for a, b in pairs) / n
    p_e = sum((sum(a == k for a, _ in pairs) / n) * (sum(b == k for _, b in pairs) / n)
              for k in GRADES)
    return {"n": n, "agreement": p_o, "kappa": (p_o - p_e) / (1 - p_e) if p_e < 1 else 1.0}
