"""Data parallelism and gradient accumulation do not change the numbers: 2 CPU processes
(gloo, torchrun) x 2 pairs, 1 process x 4 pairs, and 1 process x 2 pairs x 2 accumulation
steps give the same losses and weights (the 2-process run with precomputed, sharded reference
log-probs; the others with a live reference model)."""

import os
import subprocess
import sys

import pytest
from helpers import CONFIGS, TESTS, make_pairs, metrics, tiny_config, tiny_model

from safedpo.train.loop import train

SCRIPT = """
import sys
from helpers import make_pairs
from safedpo.config import load_config
from safedpo.train.loop import train
train(load_config(None, sys.argv[1:]), make_pairs() * 2)
"""


def run_metrics(run_dir):
    rows = metrics(run_dir)
    return {k: [r[k] for r in rows] for k in ("loss", "rewards/margins", "grad_norm", "epoch")}


def weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_equal_one_process_and_accumulation(tmp_path):
    model = tiny_model(tmp_path)
    common = dict(max_steps=3, optim="adamw_torch", learning_rate=1e-2)
    train(tiny_config(tmp_path, model, out="one", per_device_train_batch_size=4, **common),
          make_pairs() * 2)
    train(tiny_config(tmp_path, model, out="accum", per_device_train_batch_size=2,
                      gradient_accumulation_steps=2, **common), make_pairs() * 2)

    script = tmp_path / "launch.py"
    script.write_text(SCRIPT)
    # The 2-process run also precomputes the reference (sharded over processes, gathered).
    cfg = tiny_config(tmp_path, model, out="two", per_device_train_batch_size=2,
                      precompute_ref_log_probs=True, **common)
    args = [f"--{k}={v}" for k, v in cfg.to_dict().items()
            if v is not None and not isinstance(v, (list, dict))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), *args],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one, accum, two = (run_metrics(tmp_path / n) for n in ("one", "accum", "two"))
    assert one["epoch"] == two["epoch"] == [0.5, 1.0, 1.5]  # global batch 4 of 8 pairs
    for key in ("loss", "rewards/margins", "grad_norm"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
        assert accum[key] == pytest.approx(one[key], abs=1e-5), key
    assert abs(one["rewards/margins"][2]) > 1e-3  # the policy moved away from the reference
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5


@pytest.mark.parametrize("name", ["zero2.yaml", "zero3.yaml"])
def test_deepspeed_configs_get_batch_and_clipping_from_the_training_config(name):
    """accelerate sizes DeepSpeed's batch from a DataLoader; we pass none, so the shipped
    configs' "auto" values are filled from ours (else ``prepare`` refuses to start)."""
    import yaml
    from accelerate.utils import DeepSpeedPlugin

    from safedpo.config import TrainConfig
    from safedpo.train.runtime import fill_deepspeed_config

    shipped = yaml.safe_load((CONFIGS / "accelerate" / name).read_text())
    plugin = DeepSpeedPlugin(**shipped["deepspeed_config"])  # as `accelerate launch` builds it
    ds = plugin.deepspeed_config
    assert plugin.is_auto("train_micro_batch_size_per_gpu") and plugin.is_auto("gradient_clipping")
    fill_deepspeed_config(ds, TrainConfig(per_device_train_batch_size=3, max_grad_norm=0.5))
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_clipping"]) == (3, 0.5)

    off = fill_deepspeed_config({"gradient_clipping": "auto"}, TrainConfig(max_grad_norm=None))
    assert off["gradient_clipping"] == 0.0  # DeepSpeed's "no clipping"
    same = {"train_micro_batch_size_per_gpu": 8, "gradient_clipping": 1}
    assert fill_deepspeed_config(dict(same), TrainConfig(per_device_train_batch_size=8)) == same
    with pytest.raises(ValueError, match="gradient_clipping = 2.0 but max_grad_norm is 1.0"):
        fill_deepspeed_config({"gradient_clipping": 2.0}, TrainConfig(max_grad_norm=1.0))
    with pytest.raises(ValueError, match="per_gpu = 2 but per_device_train_batch_size is 8"):
        fill_deepspeed_config({"train_micro_batch_size_per_gpu": 2},
                              TrainConfig(per_device_train_batch_size=8))
