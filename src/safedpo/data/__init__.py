"""Data: one convention after loading, ``SafetyPair``.

``load_rows`` reads and validates PKU-SafeRLHF-style rows (SAFE flags); ``build_pairs`` turns them
into ``SafetyPair``s (UNSAFE flags) with the SafeDPO transformation or a baseline view;
``load_pairs`` does both.
"""

from safedpo.data.sources import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SUPPORTED_FORMATS,
    LoadResult,
    PreferenceRow,
    load_prompts,
    load_rows,
    load_sft_examples,
    read_table,
)
from safedpo.data.transform import (
    VIEWS,
    build_pairs,
    load_pairs,
    require_pairs,
    transform,
)
from safedpo.data.types import DataError, SafetyPair

__all__ = [
    "DataError", "LoadResult", "OPTIONAL_COLUMNS", "PreferenceRow", "REQUIRED_COLUMNS",
    "SUPPORTED_FORMATS", "SafetyPair", "VIEWS", "build_pairs", "load_pairs", "load_prompts",
    "load_rows", "load_sft_examples", "read_table", "require_pairs", "transform",
]
