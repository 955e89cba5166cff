"""More bad input to `safedpo eval` and `safedpo pairs` (and the model files they load): each case
is one line `safedpo CMD: error: ...` naming what is wrong, exit code 2, no traceback."""

from __future__ import annotations

import json
import shutil

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
    ("eval-safetensors-not-weights", ["eval", "--model", "{tmp}/bad_weights", "--prompts",
                                      "{tmp}/prompts.jsonl", "--scorer", "refusal"],
     ["bad_weights/model.safetensors", "a link to", "tokenizer.json",
      "not a readable safetensors file", "header too large"]),
    ("train-safetensors-not-weights", ["train", "--model_name_or_path", "{tmp}/bad_weights"],
     ["bad_weights/model.safetensors", "not a readable safetensors file"]),
    ("eval-tokenizer-not-json", ["eval", "--model", "{tmp}/bad_tokenizer", "--prompts",
                                 "{tmp}/prompts.jsonl", "--scorer", "refusal"],
     ["bad_tokenizer/tokenizer.json", "not valid JSON", "line 1 column"]),
    ("train-tokenizer-not-json", ["train", "--model_name_or_path", "{tmp}/bad_tokenizer"],
     ["bad_tokenizer/tokenizer.json", "not valid JSON"]),
    ("eval-csv-not-utf8", ["eval", "--model", "{model}", "--prompts", "{tmp}/latin1.csv",
                           "--scorer", "refusal"],
     ["latin1.csv", "row 2", "(line 4)", "not UTF-8", "byte 0xe9"]),
    ("saferlhf-cost-model-as-reward", ["saferlhf", "--reward_model_path", "{tmp}/cm",
                                       "--cost_model_path", "{tmp}/cm/model"],
     ["reward_model_path {tmp}/cm is a cost model", "safedpo_score_kind"]),
    ("saferlhf-reward-model-as-cost", ["saferlhf", "--reward_model_path", "{tmp}/rm",
                                       "--cost_model_path", "{tmp}/rm/model"],
     ["cost_model_path {tmp}/rm/model is a reward model"]),
    ("saferlhf-causal-lm-as-reward", ["saferlhf", "--reward_model_path", "{model}",
                                      "--cost_model_path", "{tmp}/cm"],
     ["{model} is not a sequence classifier", "LlamaForCausalLM"]),
    ("eval-reward-model-as-cost", ["eval", "--model", "{model}", "--prompts",
                                   "{tmp}/prompts.jsonl", "--scorer", "cost:{tmp}/rm"],
     ["scorer cost: {tmp}/rm is a reward model"]),
    ("eval-causal-lm-as-cost", ["eval", "--model", "{model}", "--prompts",
                                "{tmp}/prompts.jsonl", "--scorer", "cost:{model}"],
     ["{model} is not a sequence classifier"]),
    ("train-csv-not-utf8", ["train", "--model_name_or_path", "{model}", "--dataset",
                            "{tmp}/latin1_pairs.csv"],
     ["latin1_pairs.csv", "row 1", "(line 2)", "not UTF-8"]),
]

ROW = {"prompt": "how do I pick a lock", "response_0": "use a tension wrench",
       "response_1": "I cannot help with that", "better_response_id": 0, "safer_response_id": 1,
       "is_response_0_safe": False, "is_response_1_safe": True}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_more")
    model = tiny_model(tmp)
    (tmp / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    huge = {"prompt": "bread " * (MAX_PROMPT_CHARS // 6 + 1), "harmful": False}
    (tmp / "huge.jsonl").write_text(json.dumps(PROMPTS[0]) + "\n" + json.dumps(huge) + "\n")
    (tmp / "huge.csv").write_text(f"prompt,harmful\n{huge['prompt']},false\n")
    (tmp / "train.jsonl").write_text(json.dumps(ROW) + "\n")
    # a model.safetensors that is a link to another file
    weights = shutil.copytree(model, tmp / "bad_weights")
    (weights / "model.safetensors").unlink()
    (weights / "model.safetensors").symlink_to(weights / "tokenizer.json")
    tokenizer = shutil.copytree(model, tmp / "bad_tokenizer")
    (tokenizer / "tokenizer.json").write_text('{"version": "1.0", "truncation": null, oops')
    # Latin-1 text: "é" is byte 0xe9; the bad row is data row 2, line 4 (after a blank line)
    (tmp / "latin1.csv").write_bytes("prompt,harmful\nhow do I bake bread,false\n\n"
                                     "how do I bake a café cake,false\n".encode("latin-1"))
    (tmp / "latin1_pairs.csv").write_bytes(
        (",".join(ROW) + "\n" + ",".join(str(v) for v in ROW.values()).replace("lock", "lock é")
         + "\n").encode("latin-1"))
    # a reward model and a cost model (`safedpo rm` / `safedpo cm`, one step each)
    for cmd in ("rm", "cm"):
        assert main([cmd, "--model_name_or_path", model, "--output_dir", str(tmp / cmd),
                     *TRAIN_ARGS, "--dataset", str(tmp / "train.jsonl")]) == 0
    return tmp, model


TRAIN_ARGS = ["--max_steps", "1", "--disable_tqdm", "true", "--per_device_train_batch_size",
              "1", "--max_length", "32", "--save_steps", "0"]


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
    argv = [sub(a) for a in argv if a != "LOCKED"]
    if argv[0] in ("train", "saferlhf"):
        argv += ["--output_dir", str(out), *TRAIN_ARGS]
        if "--model_name_or_path" not in argv:
            argv += ["--model_name_or_path", model]
        if "--dataset" not in argv:
            argv += ["--dataset", str(tmp / "train.jsonl")]
    else:
        argv += ["--output-dir", str(out), "--max-new-tokens", "2", "--no-progress"]
    lock = lock_output_dir(out) if locked else None  # another run holding the dir
    try:
        line = run_one_line(argv[0], argv, capsys)
    finally:
        if lock is not None:
            lock.close()
    for fact in facts:
        assert sub(fact) in line, line
    assert not (out / "generations.jsonl").exists() and not (out / "plain.jsonl").exists()
