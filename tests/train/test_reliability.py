"""Reliability and security (issue 17): bad files name their row and line, only finite and
complete checkpoints are kept and listed, one run per output_dir, resume refuses changed
settings, and no file a run dir holds can run code (config.yaml, optimizer.bin, pkg:// paths)."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from helpers import make_pairs, metrics, tiny_config, tiny_model, write_jsonl

from safedpo.cli import main
from safedpo.config import ConfigError, load_config, resume_changes
from safedpo.data.sources import read_table
from safedpo.data.types import DataError
from safedpo.losses import LOSSES
from safedpo.models.loading import load_model_and_tokenizer, load_trained
from safedpo.models.sources import package_file
from safedpo.train import checkpoint as ckpt
from safedpo.train.loop import train


def pku_rows():
    return [{"prompt": p.prompt, "response_0": p.chosen, "response_1": p.rejected,
             "better_response_id": 0, "safer_response_id": 0, "is_response_0_safe": True,
             "is_response_1_safe": not p.rejected_unsafe} for p in make_pairs()]


def run_cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()  # only what this command prints
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


# --- weak inputs ----------------------------------------------------------------------------

def test_malformed_utf8_in_jsonl_names_the_row_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [json.dumps(r).encode() for r in pku_rows()]
    # line 3 is blank (not a row): the bad bytes are on line 4, row 3
    path.write_bytes(rows[0] + b"\n" + rows[1] + b"\n\n" + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError) as e:
        read_table(path)
    assert str(e.value) == (f"file {path}, row 3: not UTF-8 text (byte 0xe9 at position 16 in "
                            "the line); save the file as UTF-8 (line 4)")
    table = read_table(path, skip_malformed=True)  # --skip_invalid counts it and goes on
    assert len(table.records) == 2 and [m.row for m in table.malformed] == [3]


def test_a_file_given_as_a_model_says_so(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"not a model folder")
    with pytest.raises(FileNotFoundError, match="is a file, not a model folder"):
        load_model_and_tokenizer(str(path))


# --- faults: non-finite state ---------------------------------------------------------------

class _OneProcess:
    """What state_is_finite needs of an accelerator, for one process."""
    device = "cpu"

    @staticmethod
    def reduce(t, reduction):
        return t


@pytest.mark.parametrize("weight, moment, finite", [
    (1.0, 1.0, True), (float("nan"), 1.0, False), (1.0, float("inf"), False),
    (1.0, float("nan"), False)])
def test_state_is_finite_checks_weights_and_optimizer_state(weight, moment, finite):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()  # creates exp_avg / exp_avg_sq
    with torch.no_grad():
        model.weight[0, 0] = weight
        opt.state[model.bias]["exp_avg_sq"][0] = moment
    assert ckpt.state_is_finite(_OneProcess, model, opt) is finite


def test_an_update_to_nan_weights_is_never_saved(tmp_path, monkeypatch):
    """The loss of step 2 is finite but its update is NaN (NaN gradients): step-2 must not be
    kept, and the message names step-1, whose weights are finite."""
    from safetensors.torch import load_file

    calls = []

    def nan_grads_from_step_2(pc, pr, rc, rr, cu, ru, *, beta, **_):
        calls.append(1)
        if len(calls) >= 2:
            pc.register_hook(lambda g: torch.full_like(g, float("nan")))
        return LOSSES["dpo"](pc, pr, rc, rr, cu, ru, beta=beta)

    monkeypatch.setitem(LOSSES, "nan_grad_test", nan_grads_from_step_2)
    cfg = tiny_config(tmp_path, tiny_model(tmp_path), loss_type="nan_grad_test", max_steps=6,
                      save_steps=1, logging_steps=5)
    with pytest.raises(FloatingPointError,
                       match=r"non-finite weights or optimizer state after step 2.*step-1\)"):
        train(cfg, make_pairs())
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-1"]
    weights = load_file(str(tmp_path / "run" / "checkpoints" / "step-1" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


# --- faults: one run per output_dir ---------------------------------------------------------

def test_a_second_run_into_a_held_output_dir_stops_at_once(tmp_path, capsys):
    data = str(write_jsonl(tmp_path / "train.jsonl", pku_rows()))
    lock = ckpt.lock_output_dir(tmp_path / "run")  # a run holding the dir
    argv = ["train", "--model_name_or_path", tiny_model(tmp_path), "--dataset", data,
            "--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--disable_tqdm"]
    code, err = run_cli(capsys, *argv)
    assert code == 2 and err == (f"safedpo train: error: output_dir {tmp_path / 'run'} is in use "
                                 f"by a running run (pid {os.getpid()} on {os.uname().nodename}); "
                                 "wait for it to finish, stop it, or use another output_dir")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing touched
    lock.close()
    assert run_cli(capsys, *argv)[0] == 0


def test_a_killed_run_does_not_leave_its_lock_held(tmp_path):
    code = textwrap.dedent(f"""
        import time
        from safedpo.train.checkpoint import lock_output_dir
        lock = lock_output_dir({str(tmp_path / 'run')!r})
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by a running run \\(pid {proc.pid} "):
            ckpt.lock_output_dir(tmp_path / "run")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt.lock_output_dir(tmp_path / "run").close()  # the kernel released it


# --- faults: only complete checkpoints ------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 4-step run from a file, with checkpoints step-1 .. step-3 (AdamW: optimizer state)."""
    tmp = tmp_path_factory.mktemp("finished")
    data = str(write_jsonl(tmp / "train.jsonl", pku_rows()))
    train(tiny_config(tmp, tiny_model(tmp), dataset=data, max_steps=4, save_steps=1,
                      save_total_limit=None, optim="adamw_torch", learning_rate=1e-3))
    return tmp / "run"


def copy_run(finished_run, tmp_path) -> tuple[Path, object]:
    """A copy of the finished run and its config (same settings, the copy as output_dir)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run, load_config(run / "config.yaml", output_dir=str(run))


@pytest.mark.parametrize("damage", ["weights deleted", "optimizer cut short", "state unreadable"])
def test_a_damaged_checkpoint_is_not_listed_or_resumed(finished_run, tmp_path, damage):
    run, _ = copy_run(finished_run, tmp_path)
    step2 = run / "checkpoints" / "step-2"
    if damage == "weights deleted":  # what a kill -9 inside shutil.rmtree used to leave
        (step2 / "model.safetensors").unlink()
    elif damage == "optimizer cut short":
        data = (step2 / "optimizer.bin").read_bytes()
        (step2 / "optimizer.bin").write_bytes(data[:len(data) // 2])
    else:
        (step2 / ckpt.STATE_FILE).write_text('{"global_step": 2, "fi')
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-1", "step-3"]
    with pytest.raises(FileNotFoundError, match=f"checkpoint.*{step2}"):
        ckpt.find_checkpoint(run, str(step2))


def test_a_kill_while_deleting_a_checkpoint_never_leaves_a_listed_half(finished_run, tmp_path,
                                                                       monkeypatch):
    run, cfg = copy_run(finished_run, tmp_path)

    def killed(path, *args, **kwargs):  # the process dies inside the delete
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.remove(run / "checkpoints" / "step-1")
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-2", "step-3"]
    leftover = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftover == [f".deleting-step-1-{os.getpid()}"]
    (run / ".tmp-model").mkdir()  # a final save cut short
    cfg.resume_from_checkpoint = "latest"
    train(cfg)  # the next run of the dir clears what the dead one left
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not (run / ".tmp-model").exists()


def test_a_run_stopped_before_its_first_checkpoint_runs_again(finished_run, tmp_path):
    run, cfg = copy_run(finished_run, tmp_path)
    for name in ("checkpoints", "model", "train_summary.json"):  # killed after metrics line 4
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    cfg.resume_from_checkpoint = "latest"
    with pytest.raises(FileNotFoundError, match="stopped before its first checkpoint; run it "
                                                "again without --resume_from_checkpoint"):
        train(cfg)
    cfg.resume_from_checkpoint = None
    with pytest.warns(UserWarning, match="stopped before its first checkpoint; starting it again"):
        train(cfg)
    steps = [r["step"] for r in metrics(run)]
    assert steps == [1, 2, 3, 4]


# --- faults: resume only with the same settings ---------------------------------------------

@pytest.mark.parametrize("changes, refused", [
    ({}, {}),
    ({"learning_rate": 0.03, "seed": 7}, {"learning_rate": (1e-3, 0.03), "seed": (42, 7)}),
    ({"max_steps": 5}, {"max_steps": (4, 5)}),  # a longer run has another lr schedule
    ({"loss_kwargs": {"a": 1}}, {"loss_kwargs": ({}, {"a": 1})}),
    ({"logging_steps": 2, "save_steps": 3, "save_total_limit": 1, "disable_tqdm": False,
      "report_to": ["tensorboard"], "output_dir": "elsewhere"}, {}),
])
def test_resume_changes_lists_what_changes_the_run(finished_run, changes, refused):
    old = yaml.safe_load((finished_run / "config.yaml").read_text())
    new = load_config(finished_run / "config.yaml", resume_from_checkpoint="latest")
    for key, value in changes.items():
        setattr(new, key, value)
    assert resume_changes(old, new) == refused
    del old["beta"]  # a config.yaml written before a key existed: its default ran
    assert resume_changes(old, new) == refused


def test_resume_with_changed_settings_is_refused_in_one_line(finished_run, tmp_path, capsys):
    run, _ = copy_run(finished_run, tmp_path)
    before = (run / "config.yaml").read_text()
    code, err = run_cli(capsys, "train", "--config", str(run / "config.yaml"), "--output_dir",
                        str(run), "--resume_from_checkpoint", "latest", "--learning_rate", "0.03",
                        "--seed", "7")
    assert code == 2 and err == (
        "safedpo train: error: resume_from_checkpoint: seed 42 -> 7, learning_rate 0.001 -> 0.03 "
        f"differ from the run being resumed ({run / 'config.yaml'}); resume with its settings, "
        "or start a new run in another output_dir")
    assert (run / "config.yaml").read_text() == before


# --- security -------------------------------------------------------------------------------

def remote_code_run(tmp_path) -> tuple[Path, Path]:
    """A downloaded run dir whose config.yaml asks for remote code and whose model names an
    auto_map module that writes a marker when imported."""
    run, marker = tmp_path / "downloaded", tmp_path / "marker"
    shutil.copytree(tiny_model(tmp_path), run / "model")
    cfg = json.loads((run / "model" / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"}
    (run / "model" / "config.json").write_text(json.dumps(cfg))
    (run / "model" / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class Evil(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    (run / "config.yaml").write_text("trust_remote_code: true\n")
    return run, marker


def test_eval_never_takes_trust_remote_code_from_the_run_dir(tmp_path, capsys):
    run, marker = remote_code_run(tmp_path)
    model, _, _ = load_trained(run)
    assert type(model).__name__ == "LlamaForCausalLM" and not marker.exists()
    prompts = str(write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "how do I bake bread"}]))
    assert run_cli(capsys, "eval", "--model", str(run), "--prompts", prompts, "--scorer",
                   "refusal", "--max-new-tokens", "2", "--n-boot", "10", "--no-progress")[0] == 0
    assert not marker.exists()


def test_train_never_takes_trust_remote_code_from_a_config_file(tmp_path, capsys):
    """A downloaded run's config.yaml given as --config must not run its model's code."""
    run, marker = remote_code_run(tmp_path)
    data = tmp_path / "train.jsonl"
    code, err = run_cli(capsys, "train", "--config", str(run / "config.yaml"),
                        "--model_name_or_path", str(run / "model"), "--dataset", str(data),
                        "--output_dir", str(tmp_path / "out"))
    assert code == 2 and not marker.exists()
    assert err.strip() == (f"safedpo train: error: {run / 'config.yaml'}: trust_remote_code: "
                           "true is only taken from the command line; pass "
                           "--trust_remote_code true if you trust the model's code")
    # The person running the command may turn it on; a file may still say false.
    assert load_config(None, ["--trust_remote_code", "true"]).trust_remote_code is True
    (tmp_path / "off.yaml").write_text("trust_remote_code: false\n")
    assert load_config(tmp_path / "off.yaml").trust_remote_code is False


def test_eval_cli_has_a_trust_remote_code_flag():
    from safedpo.cli import build_parser

    parser = build_parser(["eval"])
    base = ["eval", "--model", "m", "--prompts", "world"]
    assert parser.parse_args(base).trust_remote_code is False
    assert parser.parse_args([*base, "--trust-remote-code"]).trust_remote_code is True


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin"])
def test_a_crafted_checkpoint_file_is_refused_not_run(finished_run, tmp_path, capsys, name):
    run, _ = copy_run(finished_run, tmp_path)
    step = run / "checkpoints" / "step-2"
    marker = tmp_path / "marker"
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, step / name)
    state = json.loads((step / ckpt.STATE_FILE).read_text())  # an attacker fixes the sizes too
    state["files"][name] = (step / name).stat().st_size
    (step / ckpt.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(pickle.UnpicklingError):  # the payload is real: unsafe loading runs it
        torch.load(step / name, weights_only=True)
    code, err = run_cli(capsys, "train", "--config", str(run / "config.yaml"), "--output_dir",
                        str(run), "--resume_from_checkpoint", str(step))
    assert code == 2 and err.splitlines()[-1] == (
        f"safedpo train: error: checkpoint {step} holds a file that is not plain tensors, "
        "refused (Unsupported global: GLOBAL exec); resume from a checkpoint you trust")
    assert not marker.exists()
    torch.load(step / name, weights_only=False)
    assert marker.read_text() == "ran"


def test_deepspeed_checkpoint_files_are_scanned_before_deepspeed_loads_them(tmp_path):
    """DeepSpeed loads its own optimizer files without weights_only: ours scan them first."""
    ds = pytest.importorskip("deepspeed.runtime.fp16.loss_scaler")
    good, bad = tmp_path / "good" / "pytorch_model", tmp_path / "bad" / "pytorch_model"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    # What a real ZeRO optimizer file holds besides tensors (found in a 2-process ZeRO-2 run).
    torch.save({"state": torch.zeros(2), "loss_scaler": ds.LossScaler(1.0)},
               good / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    ckpt.check_pickles(good.parent)
    marker = tmp_path / "marker"
    torch.save({"state": torch.zeros(2), "x": _Payload(marker)},
               bad / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(ConfigError, match="names builtins.exec, which a checkpoint never needs"):
        ckpt.check_pickles(bad.parent)
    assert not marker.exists()


@pytest.mark.parametrize("rel", ["../outside.gguf", "sub/../../outside.gguf", "/../outside.gguf"])
def test_a_pkg_path_stays_inside_its_package(tmp_path, monkeypatch, capsys, rel):
    pkg = tmp_path / "site" / "weights_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "site" / "outside.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert package_file("pkg://weights_pkg/sub/../m.gguf") == pkg / "sub" / ".." / "m.gguf"
    with pytest.raises(ValueError, match="points outside package 'weights_pkg'"):
        package_file(f"pkg://weights_pkg/{rel}")
    data = str(write_jsonl(tmp_path / "train.jsonl", pku_rows()))
    code, err = run_cli(capsys, "train", "--model_name_or_path", f"pkg://weights_pkg/{rel}",
                        "--dataset", data, "--output_dir", str(tmp_path / "run"))
    assert code == 2 and err == (
        f"safedpo train: error: model_name_or_path: model source 'pkg://weights_pkg/{rel}' "
        f"points outside package 'weights_pkg' ({tmp_path / 'site' / 'outside.gguf'}); name a "
        "file inside it")
    assert not (tmp_path / "run").exists()
