"""Evaluation: generate answers for a prompt set, score them (reward, cost, refusal), compute
metrics with bootstrap confidence intervals, and report one run or many.

Python API::

    from safedpo.evaluate import evaluate, write_report
    metrics = evaluate("runs/safedpo", "world", "runs/safedpo/eval/world")
    write_report(["runs/sft/eval/world", "runs/safedpo/eval/world"], "report",
                 reference="runs/sft/eval/world")
"""

import importlib

# name -> submodule. Imported on first use (PEP 562), not here: importing any submodule runs
# this file, and ``safedpo eval --help`` must not load torch through runner and scorers.
_EXPORTS = {"evaluate": "runner", "write_report": "report", "write_eval_report": "report",
            **{name: "scorers" for name in (
                "Scorer", "OracleRewardScorer", "OracleCostScorer", "OracleGarbledScorer",
                "SequenceClassifierScorer", "SafeRLHFScoreModelScorer", "RefusalScorer",
                "RefusalCostScorer", "build_scorers")}}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
