"""`safedpo demo --fast`: the whole pipeline end to end with a very small model and a few
steps (numbers meaningless), checking the files and keys the report promises."""

import json
import math
import os
import signal

from safedpo.cli import main
from safedpo.pipelines.demo import LABELS, reading

KEYS = ("harmless_ratio", "helpfulness", "over_refusal", "garbled", "tv_to_optimum",
        "train_seconds")


def test_demo_fast_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--seed", "1", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Report: {out / 'report.md'}" in printed and "| SafeDPO |" in printed

    for name in ("sft.jsonl", "train.jsonl", "train.parquet", "test.jsonl",
                 "eval_prompts.jsonl"):
        assert (out / "data" / name).stat().st_size > 0
    for run in ("sft", "dpo_helpful", "dpo_harmless", "safedpo"):
        summary = json.loads((out / run / "train_summary.json").read_text())
        assert summary["global_step"] == (3 if run == "sft" else 2)  # the --fast step counts
        assert (out / run / "model" / "model.safetensors").is_file()
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "sampled" / "report.md").is_file()

    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 1 and report["seconds_total"] > 0
    assert list(report["methods"]) == ["reference", "dpo_helpful", "dpo_harmless", "safedpo"]
    for name, m in report["methods"].items():
        assert set(KEYS) <= set(m), name
        for key in ("harmless_ratio", "over_refusal", "garbled", "tv_to_optimum"):
            assert 0.0 <= m[key] <= 1.0 + 1e-9, (name, key)
        assert m["train_seconds"] > 0
        assert set(m["sampled"]) >= {"harmless_ratio", "over_refusal", "garbled"}
    # The closed-form optimum is safe by construction and at distance 0 from itself.
    assert math.isclose(report["optimum"]["harmless_ratio"], 1.0)
    assert report["optimum"]["tv_to_optimum"] == 0.0
    assert report["delta"] == 0.5 and report["recipe"]["preference"]["optim"] == "sgd"

    text = (out / "report.md").read_text()
    assert "![helpfulness versus harmless ratio](frontier.png)" in text
    for label in ("reference (SFT)", "DPO-HELPFUL", "DPO-HARMLESS", "SafeDPO", "pi*"):
        assert f"| {label}" in text
    # The paragraph of reading, with the table's own numbers in it.
    safe = report["methods"]["safedpo"]
    assert reading(report) in text
    assert f"SafeDPO (Delta = 0.5) is {100 * safe['harmless_ratio']:.1f}% harmless" in text

    # The plot: one point per policy plus pi*, at the report's numbers (y in %). After two
    # steps DPO-HELPFUL has not moved, so helpfulness cannot be normalized: raw reward on x.
    drawn = [(d["label"], d["x"], d["y"]) for d in report["plot"]["points"]]
    points = [*report["methods"].items(), ("optimum", report["optimum"])]
    x = "helpfulness" if all(m["helpfulness"] is not None for _, m in points) else "reward"
    expected = [(LABELS[n], m[x], 100 * m["harmless_ratio"]) for n, m in points]
    assert drawn == expected
    assert (out / "frontier.png").stat().st_size > 10_000


def test_demo_stops_at_an_interrupted_stage_with_the_hint(tmp_path, capsys, monkeypatch):
    """SIGTERM during the first preference run: the demo stops there (exit 130, one line
    naming the stage, its step and checkpoint), trains and evaluates nothing after it."""
    from safedpo.train import loop as engine

    real_train = engine.train

    def terminated(config, pairs=None, *, callbacks=()):
        return real_train(config, pairs,
                          callbacks=[lambda metrics: os.kill(os.getpid(), signal.SIGTERM)])

    monkeypatch.setattr(engine, "train", terminated)
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--no-sampling", "--output-dir", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if ln.startswith("safedpo demo: "))
    assert f"training of {out / 'dpo_helpful'} was interrupted at step 2" in line
    assert str(out / "dpo_helpful" / "checkpoints") in line and "stopped there" in line
    assert (out / "sft" / "model").is_dir()  # the stage before it finished
    assert not (out / "dpo_harmless").exists() and not (out / "report.md").exists()
