"""Bad input to `safedpo train`: each case is one line `safedpo train: error: ...` naming what
is wrong (and how to fix it), exit code 2, no traceback, and a previous run in the output dir
left untouched, even with --overwrite_output_dir true (everything is checked before a file of
the previous run is deleted or a model loads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tiny_model

from safedpo.cli import main

ROW = {"prompt": "how do I pick a lock", "response_0": "use a tension wrench",
       "response_1": "I cannot help with that", "better_response_id": 0, "safer_response_id": 1,
       "is_response_0_safe": False, "is_response_1_safe": True}
BOTH_UNSAFE = {**ROW, "is_response_1_safe": False}
V1_ROW = {**ROW, "response_0_harm_category": {"Violence": True, "Drugs": False},
          "response_1_harm_category": {"Violence": False, "Drugs": False},
          "response_0_severity_level": 2, "response_1_severity_level": 0}

# (case id, extra arguments ({tmp} = the test's folder), facts the message must contain)
CASES = [
    ("view", ["--view", "nonsense"], ["view", "'nonsense'", "safedpo", "harmless"]),
    ("not-yaml", ["--config", "{tmp}/bad.yaml"], ["bad.yaml", "not a YAML file", "line 2"]),
    ("column-map", ["--column_map", "{promptt: q}"],
     ["column_map", "'promptt'", "did you mean prompt"]),
    ("pkg-source", ["--model_name_or_path", "pkg://a.b/x"], ["pkg://a.b/x", "pkg://"]),
    ("dtype", ["--dtype", "int8"], ["dtype", "'int8'", "bfloat16"]),
    ("lr-negative", ["--learning_rate", "-0.003"], ["learning_rate must be > 0", "-0.003"]),
    ("lr-zero", ["--learning_rate", "0"], ["learning_rate must be > 0", "0.0"]),
    ("no-config-json", ["--model_name_or_path", "{tmp}/empty_model"],
     ["empty_model", "config.json"]),
    ("bso-kwargs", ["--loss_type", "bso_sba", "--loss_kwargs", "{foo: 1}"],
     ["loss_kwargs", "'foo'", "bso_sba", "lam"]),
    ("dpo-kwargs", ["--loss_type", "dpo", "--loss_kwargs", "{foo: 1}"],
     ["loss_kwargs", "'foo'", "'dpo'", "takes none"]),
    ("safedpo-kwargs", ["--loss_kwargs", "{foo: 1}"], ["loss_kwargs", "'foo'", "'safedpo'"]),
    ("all-both-unsafe", ["--dataset", "{tmp}/both_unsafe.jsonl"],
     ["both_unsafe.jsonl", "3 rows", "two unsafe responses", "--keep_both_unsafe", "--view"]),
    ("severity-map", ["--delta_by_severity", "{5: 2}"],
     ["delta_by_severity", "severity level 5", "allowed: 0, 1, 2, 3"]),
    ("category-map", ["--dataset", "{tmp}/v1.jsonl", "--delta_by_category", "{Violance: 2}"],
     ["delta_by_category", "'Violance'", "did you mean 'Violence'", "the data has: Violence"]),
    ("missing-model", ["--model_name_or_path", "{tmp}/no_such_model"],
     ["no_such_model", "not found"]),
    ("duplicate-key", ["--config", "{tmp}/twice.yaml"],
     ["twice.yaml", "line 3", "'beta'", "twice", "line 1"]),
    ("duplicate-kwargs", ["--loss_type", "bso_sba", "--loss_kwargs", "{lam: 1, lam: 2}"],
     ["loss_kwargs", "'lam'", "twice"]),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    model = tiny_model(tmp)
    (tmp / "train.jsonl").write_text(json.dumps(ROW) + "\n")
    (tmp / "both_unsafe.jsonl").write_text((json.dumps(BOTH_UNSAFE) + "\n") * 3)
    (tmp / "v1.jsonl").write_text(json.dumps(V1_ROW) + "\n")
    (tmp / "bad.yaml").write_text("beta: 0.1\n  delta: [1\n")
    (tmp / "twice.yaml").write_text("beta: 0.1\ndelta: 1\nbeta: 0.2\n")
    (tmp / "empty_model").mkdir()
    (tmp / "empty_model" / "model.safetensors").write_bytes(b"")
    return tmp, model


def previous_run(out: Path) -> dict[str, bytes]:
    """A finished run's files in ``out``; -> {relative path: content}."""
    files = {"metrics.jsonl": b'{"step": 1, "loss": 0.5}\n', "train_summary.json": b"{}",
             "model/config.json": b"{}", "config.yaml": b"beta: 0.1\n"}
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return files


@pytest.mark.parametrize("extra,facts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_keeps_the_previous_run(setup, tmp_path, capsys,
                                                                  extra, facts):
    tmp, model = setup
    out = tmp_path / "run"
    files = previous_run(out)
    argv = ["train", "--model_name_or_path", model, "--dataset", str(tmp / "train.jsonl"),
            "--output_dir", str(out), "--overwrite_output_dir", "true", "--max_steps", "1",
            "--disable_tqdm", "true", *[a.replace("{tmp}", str(tmp)) for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("safedpo train: error: "), err
    for fact in facts:
        assert fact in lines[0], (fact, lines[0])
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == set(files)
    for name, data in files.items():
        assert (out / name).read_bytes() == data, name


@pytest.mark.parametrize("command", ["train", "sft", "rm", "cm", "saferlhf"])
@pytest.mark.parametrize("where,what", [("/", "a filesystem root"),
                                        ("/tmp/../", "a filesystem root"),
                                        ("~/", "your home folder"), ("HOME", "your home folder")])
def test_every_trainer_refuses_root_and_home_as_output_dir(setup, tmp_path, capsys, monkeypatch,
                                                           command, where, what):
    """Not in CASES: a run that got through would write into / or the home folder. Here HOME
    is a temporary folder and the engine never runs."""
    import safedpo.cli.train

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"{command} started with output_dir {where}")

    monkeypatch.setattr(safedpo.cli.train, "run_engine", must_not_run)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    where = str(home) if where == "HOME" else where
    tmp, model = setup
    assert main([command, "--model_name_or_path", model, "--dataset", str(tmp / "train.jsonl"),
                 "--output_dir", where, "--max_steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"safedpo {command}: error: output_dir {where!r} is {what}: a run writes " \
        "(and with --overwrite_output_dir replaces) files there; give it a folder of its own, " \
        "e.g. runs/NAME"
    assert not any(home.iterdir())


def test_a_model_that_fails_to_load_leaves_the_previous_run(setup, tmp_path, capsys,
                                                            monkeypatch):
    """The previous run's files go only once the new model and data have loaded."""
    import safedpo.train.objectives

    def broken(config):
        raise OSError(f"could not load model '{config.model_name_or_path}'")

    monkeypatch.setattr(safedpo.train.objectives, "load_policy", broken)
    tmp, model = setup
    out = tmp_path / "run"
    files = previous_run(out)
    assert main(["train", "--model_name_or_path", model, "--dataset", str(tmp / "train.jsonl"),
                 "--output_dir", str(out), "--overwrite_output_dir", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"safedpo train: error: could not load model '{model}'"
    for name, data in files.items():
        assert (out / name).read_bytes() == data, name


# --- safedpo compare --------------------------------------------------------------------------
# Each case: the compare YAML ({tmp} = the test's folder, {cfg} = a training config), the extra
# arguments, and facts the one-line message must contain. OUT = {tmp}/out, where
# OUT/safedpo holds a finished run of `safedpo train` (and {tmp}/finished another one): every
# case leaves every file under {tmp} as it was, nothing written outside OUT.
COMPARE_CASES = [
    ("absolute-name", "methods:\n  {tmp}/finished: {{config: {cfg}}}\n", [],
     ["{tmp}/finished", "plain name"]),
    ("escaping-name", "methods:\n  ../escape: {{config: {cfg}}}\n", [],
     ["'../escape'", "plain name"]),
    ("dotdot-name", "methods:\n  '..': {{config: {cfg}}}\n", [], ["'..'", "plain name"]),
    ("empty-name", "methods:\n  '': {{config: {cfg}}}\n", [], ["''", "plain name"]),
    ("hidden-name", "methods:\n  .hidden: {{config: {cfg}}}\n", [], ["'.hidden'", "plain name"]),
    ("backslash-name", "methods:\n  'a\\\\b': {{config: {cfg}}}\n", [], ["plain name"]),
    ("number-name", "methods:\n  1: {{config: {cfg}}}\n", [], ["method name 1", "text"]),
    ("duplicate-method",
     "methods:\n  safedpo: {{config: {cfg}}}\n  safedpo: {{config: {cfg}, beta: 0.2}}\n", [],
     ["compare.yaml", "line 3", "'safedpo'", "twice", "line 2"]),
    ("reference-name", "methods:\n  reference: {{config: {cfg}}}\n", [],
     ["'reference'", "reference/eval"]),
    ("train-run-in-the-way", "methods:\n  safedpo: {{config: {cfg}}}\n", [],
     ["{tmp}/out/safedpo", "compare_key.json", "--force"]),
    # The evaluation block is checked before the first method trains (nothing is written).
    ("unknown-scorer",
     "methods:\n  dpo: {{config: {cfg}}}\nevaluation: {{prompts: world, scorers: [refusl]}}\n",
     [], ["evaluation: unknown scorer 'refusl'"]),
    ("missing-prompts-file",
     "methods:\n  dpo: {{config: {cfg}}}\nevaluation: {{prompts: {tmp}/nope.jsonl}}\n", [],
     ["evaluation:", "{tmp}/nope.jsonl"]),
    ("train-run-in-the-way-of-a-later-method",
     "methods:\n  dpo: {{config: {cfg}}}\n  safedpo: {{config: {cfg}, beta: 0.2}}\n", [],
     ["{tmp}/out/safedpo", "--force"]),
]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("text,extra,facts", [c[1:] for c in COMPARE_CASES],
                         ids=[c[0] for c in COMPARE_CASES])
def test_bad_compare_input_is_one_line_and_writes_nothing(setup, tmp_path, capsys, text,
                                                          extra, facts):
    tmp, model = setup
    cfg = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
    previous_run(tmp_path / "finished")
    previous_run(tmp_path / "out" / "safedpo")
    config = tmp_path / "compare.yaml"
    config.write_text(text.format(tmp=tmp_path, cfg=cfg))
    before = snapshot(tmp_path)
    argv = ["compare", "--config", str(config), "--output_dir", str(tmp_path / "out"),
            "--model_name_or_path", model, "--dataset", str(tmp / "train.jsonl"),
            "--max_steps", "1", "--disable_tqdm", "true", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("safedpo compare: error: "), err
    for fact in facts:
        fact = fact.format(tmp=tmp_path)
        assert fact in lines[0], (fact, lines[0])
    assert snapshot(tmp_path) == before
