"""Pipelines on top of the engines and the evaluation: compare (and sacpo, sweep), pairs,
the demo."""
