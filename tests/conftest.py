"""Test-wide settings: no network, one thread per process (CI has 2 cores); tests/ on sys.path,
so that ``import helpers`` (tests/helpers.py, the shared helpers) works from every folder."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("SAFEDPO_TEST_THREADS", "1")))
