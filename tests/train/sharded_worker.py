"""Run by ``accelerate launch`` in test_sharded.py: the training runs given as one JSON list of
config dicts, one after the other, in the same processes (tests/ on PYTHONPATH, for helpers)."""

import json
import sys

import fsdp_on_cpu  # noqa: F401  (FSDP on CPU; a no-op for DeepSpeed)
from helpers import make_pairs

from safedpo.config import load_config
from safedpo.train.loop import train

for values in json.loads(sys.argv[1]):
    train(load_config(None, [], **values), make_pairs() * 2)
