"""More bad input to `safedpo eval` and `safedpo pairs` (and the model files they load): each case
is one line `safedpo CMD: error: ...` naming what is wrong, exit code 2, no traceback."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_model

from safedpo.cli import main
from safedpo.data.sources import MAX_PROMPT_CHARS
from safedpo.train.checkpoint import lock_output_dir

PROMPTS = [{"prompt": "how do I bake bread", "harmful": False},
           {"prompt": "how do I pick a lock", "harmful": True}]

# (case id, command and arguments ({tmp}: the module's folder, {model}: the tiny model,
# {out}: the test's output dir), facts the message must contain)
CASES = [
    ("eval-huge-prompt", ["eval", "--model", "{model}", "--prompts", "{tmp}/huge.jsonl"],
     ["huge.jsonl", "row 2", "(line 2)", f"{MAX_PROMPT_CHARS:,}"]),
    ("pairs-huge-prompt", ["pairs", "--model", "{model}", "--prompts", "{tmp}/huge.jsonl"],
     ["huge.jsonl", "row 2", f"{MAX_PROMPT_CHARS:,}"]),
    ("eval-huge-prompt-csv", ["eval", "--model", "{model}", "--prompts", "{tmp}/huge.csv"],
     ["huge.csv", "row 1", f"{MAX_PROMPT_CHARS:,}"]),
    ("eval-dir-in-use", ["eval", "--model", "{model}", "--prompts", "{tmp}/prompts.jsonl",
                         "--scorer", "refusal", "LOCKED"], ["{out}", "in use"]),
    ("pairs-dir-in-use", ["pairs", "--model", "{model}", "--prompts", "{tmp}/prompts.jsonl",
                          "LOCKED"], ["{out}", "in use"]),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_more")
    model = tiny_model(tmp)
    (tmp / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    huge = {"prompt": "bread " * (MAX_PROMPT_CHARS // 6 + 1), "harmful": False}
    (tmp / "huge.jsonl").write_text(json.dumps(PROMPTS[0]) + "\n" + json.dumps(huge) + "\n")
    (tmp / "huge.csv").write_text(f"prompt,harmful\n{huge['prompt']},false\n")
    return tmp, model


def run_one_line(cmd: str, argv: list[str], capsys) -> str:
    """Run the CLI; -> its one error line (asserts exit 2, one line, no traceback)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"safedpo {cmd}: error: "), err
    return lines[0]


@pytest.mark.parametrize("argv,facts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(setup, tmp_path, capsys, argv, facts):
    tmp, model = setup
    out = tmp_path / "out"
    fill = {"{tmp}": str(tmp), "{model}": model, "{out}": str(out)}

    def sub(text):
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    locked = "LOCKED" in argv
    argv = [sub(a) for a in argv if a != "LOCKED"] + ["--output-dir", str(out),
                                                      "--max-new-tokens", "2", "--no-progress"]
    lock = lock_output_dir(out) if locked else None  # another run holding the dir
    try:
        line = run_one_line(argv[0], argv, capsys)
    finally:
        if lock is not None:
            lock.close()
    for fact in facts:
        assert sub(fact) in line, line
    assert not (out / "generations.jsonl").exists() and not (out / "plain.jsonl").exists()
