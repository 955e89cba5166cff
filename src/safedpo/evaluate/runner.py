"""``evaluate``: generate for a prompt set, score, compute metrics, write the three outputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from safedpo.evaluate import metrics as M
from safedpo.evaluate.answer_logps import answer_logps, read_answers
from safedpo.evaluate.generate import (
    generate_to_file,
    load_prompt_records,
    read_generations,
    write_jsonl,
)
from safedpo.evaluate.report import write_eval_report
from safedpo.evaluate.scorers import Scorer, build_scorers, check_scorer_specs
from safedpo.models.loading import load_trained

# Settings that change what is generated: a resumed run must match them. A sampled run also
# keeps its batch size (SAMPLING_KEYS): each batch has its own seed and its samples depend on
# the whole batch.
GENERATION_KEYS = ("model", "prompts", "split", "n_prompts", "prompt_template", "max_new_tokens",
                   "max_prompt_length", "do_sample", "temperature", "top_p", "seed")
SAMPLING_KEYS = ("batch_size",)


def _is_world(source) -> bool:
    return isinstance(source, str) and (source == "world" or source.startswith("world:"))


def default_scorers(prompts_source) -> list[str]:
    """Oracle + refusal on the synthetic world; elsewhere only string matching (no reward model
    is assumed; pass reward:PATH / cost:PATH for real numbers)."""
    return ["oracle", "refusal"] if _is_world(prompts_source) else ["refusal", "refusal-cost",
                                                                    "outcome"]


def load_policy(model, tokenizer=None, prompt_template: str | None = None, dtype=None,
                trust_remote_code: bool = False):
    """-> (model, tokenizer, prompt_template, name). ``model`` is a run dir / model dir / adapter
    dir (``safedpo.models.loading.load_trained``), a hub id, or an already-loaded model (then
    ``tokenizer`` is required). A loaded-from-disk model goes to the GPU when there is one, in
    ``dtype`` (default: bfloat16 on a GPU, float32 on a CPU). ``trust_remote_code``: only
    from the caller, never from the run's files."""
    if not isinstance(model, (str, Path)):
        if tokenizer is None:
            raise ValueError("evaluate() got a loaded model: pass its tokenizer= too")
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        return model, tokenizer, prompt_template, str(name)
    name = str(model)
    on_gpu = torch.cuda.is_available()
    dtype = dtype or ("bfloat16" if on_gpu else None)
    loaded, tok, template = load_trained(name, dtype=dtype,  # FileNotFoundError if missing
                                         trust_remote_code=trust_remote_code)
    if on_gpu and loaded.device.type == "cpu":
        loaded = loaded.to("cuda")
    return loaded, tok, prompt_template or template, name


def _empty_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _default_label(model_name: str, out_dir: Path) -> str:
    path = Path(model_name)
    if path.exists():
        return path.parent.name if path.name == "model" else path.name
    return out_dir.name


def _check_settings(path: Path, settings: dict, overwrite: bool, out_dir: Path) -> None:
    if overwrite:
        for name in ("generations.jsonl", "metrics.json", "report.md"):
            (out_dir / name).unlink(missing_ok=True)
    elif path.exists() and (out_dir / "generations.jsonl").exists():
        old = json.loads(path.read_text())
        keys = GENERATION_KEYS + (SAMPLING_KEYS if settings["do_sample"] else ())
        diff = {k: (old.get(k), settings.get(k)) for k in keys if old.get(k) != settings.get(k)}
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            if "batch_size" in diff:
                changes += "; a sampled run resumes only with its own batch size"
            raise ValueError(f"{out_dir} holds generations made with other settings ({changes}); "
                             "use another output directory or overwrite=True (--overwrite)")
    path.write_text(json.dumps(settings, indent=2) + "\n")


def _world_seed(prompts_source, world_seed: int | None) -> int:
    """The world the oracle judges: the one the prompts come from ("world:SEED")."""
    named = str(prompts_source).partition(":")[2] if _is_world(prompts_source) else ""
    if named and world_seed is not None and int(named) != world_seed:
        raise ValueError(f"prompts come from {prompts_source} but world_seed is {world_seed}: "
                         "the oracle would judge another world's prompts")
    return int(named) if named else (world_seed or 0)


def check_evaluation(prompts_source, *, scorers: Sequence[Scorer | str] | None = None,
                     split: str = "test", prompt_column: str = "prompt",
                     max_prompts: int | None = None, world_seed: int | None = None,
                     **_generation) -> tuple[list[dict], list]:
    """Everything of an evaluation that can fail before a model loads: the prompts (read,
    validated), the scorer specs (model scorers' configs only, no weights) and whether each
    scorer can judge these prompts. -> (prompt records, scorer specs). ``safedpo compare``
    calls it for its evaluation block before the first method trains."""
    world_seed = _world_seed(prompts_source, world_seed)
    records = load_prompt_records(prompts_source, split=split, prompt_column=prompt_column,
                                  world_seed=world_seed, max_prompts=max_prompts)
    specs = list(default_scorers(prompts_source) if scorers is None else scorers)
    prompts = [r["prompt"] for r in records]
    check_scorer_specs([s for s in specs if isinstance(s, str)], prompts, world_seed=world_seed)
    for spec in specs:
        if isinstance(spec, Scorer):
            spec.check(prompts)
    return records, specs


def evaluate(model, prompts_source, out_dir: str | Path, *,
             scorers: Sequence[Scorer | str] | None = None, tokenizer=None,
             prompt_template: str | None = None, max_new_tokens: int = 128,
             max_prompt_length: int | None = None,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             seed: int = 0, batch_size: int = 8, split: str = "test",
             prompt_column: str = "prompt", max_prompts: int | None = None,
             world_seed: int | None = None, reference: str | Path | None = None,
             label: str | None = None, answers: str | Path | None = None,
             n_boot: int = M.N_BOOT, dtype=None, overwrite: bool = False,
             progress: bool = True, trust_remote_code: bool = False) -> dict:
    """Generate one response per prompt, score it, and write to ``out_dir``:
    generations.jsonl (index, prompt, response, harmful, category, scores), metrics.json and
    report.md. Returns the metrics dict.

    ``model``: a run dir, model dir, adapter dir or hub id, or a loaded model with ``tokenizer``.
    ``prompts_source``: see ``load_prompt_records``. ``scorers``: Scorer objects and/or specs
    ("oracle", "refusal", "refusal-cost", "outcome", "reward:PATH", "cost:PATH"); default
    ``default_scorers(prompts_source)``. ``reference``: another evaluation's dir, to add the win
    rate against its responses (by the reward scorer). ``answers``: a jsonl of {prompt,
    response, label} whose log-probs under the model are recorded (``answer_logps``; the report
    turns them into the judge-free shift against the reference). Interrupted runs resume:
    prompts already in generations.jsonl are not generated again. ``dtype``: for a model loaded
    here and for model scorers ('float32', 'bfloat16', ...; default bfloat16 on a GPU, else
    float32).
    ``trust_remote_code``: let the policy's model files run their own code (off; never taken
    from a run dir's config.yaml).
    """
    world_seed = _world_seed(prompts_source, world_seed)
    records, specs = check_evaluation(prompts_source, scorers=scorers, split=split,
                                      prompt_column=prompt_column, max_prompts=max_prompts,
                                      world_seed=world_seed)
    out_dir = Path(out_dir)
    return _evaluate(model, prompts_source, out_dir, records, specs, tokenizer=tokenizer,
                     prompt_template=prompt_template, max_new_tokens=max_new_tokens,
                     max_prompt_length=max_prompt_length,
                     do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed,
                     batch_size=batch_size, split=split, world_seed=world_seed,
                     reference=reference, label=label, answers=answers, n_boot=n_boot,
                     dtype=dtype, overwrite=overwrite, progress=progress,
                     trust_remote_code=trust_remote_code)


def _evaluate(model, prompts_source, out_dir: Path, records: list[dict], specs: list, *,
              tokenizer, prompt_template, max_new_tokens, max_prompt_length, do_sample,
              temperature, top_p, seed,
              batch_size, split, world_seed, reference, label, answers, n_boot, dtype,
              overwrite, progress, trust_remote_code) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    given = read_answers(answers) if answers is not None else None  # before any model
    policy, tok, template, model_name = load_policy(model, tokenizer, prompt_template, dtype,
                                                      trust_remote_code)
    source_name = prompts_source if isinstance(prompts_source, (str, Path)) \
        else f"<{len(records)} prompts>"
    settings = {"model": model_name, "prompts": str(source_name), "split": split,
                "n_prompts": len(records), "prompt_template": template,
                "max_new_tokens": max_new_tokens, "do_sample": do_sample,
                "temperature": temperature if do_sample else None,
                "top_p": top_p if do_sample else None, "seed": seed if do_sample else None,
                "batch_size": batch_size,
                **({"max_prompt_length": max_prompt_length} if max_prompt_length else {})}
    _check_settings(out_dir / "eval_config.json", settings, overwrite, out_dir)

    rows = generate_to_file(policy, tok, records, out_dir / "generations.jsonl",
                            prompt_template=template, max_new_tokens=max_new_tokens,
                            max_prompt_length=max_prompt_length, do_sample=do_sample,
                            temperature=temperature, top_p=top_p, seed=seed,
                            batch_size=batch_size, progress=progress)
    if given is not None:
        given = {"source": str(answers), "labels": [r["label"] for r in given],
                 "logps": answer_logps(policy, tok, given, prompt_template=template,
                                       batch_size=batch_size)}
    if isinstance(model, (str, Path)):  # loaded here: free its memory for the scorers
        del policy
        _empty_cuda_cache()
    built: list[Scorer] = []  # in the order given: the first of each kind is the headline
    for spec in specs:
        built += [spec] if isinstance(spec, Scorer) else build_scorers(
            [spec], world_seed=world_seed, batch_size=batch_size, dtype=dtype,
            progress=progress)
    if len({s.name for s in built}) != len(built):
        raise ValueError(f"two scorers share a name: {[s.name for s in built]}")
    responses = [r["response"] for r in rows]
    for row in rows:
        row["scores"] = {}  # a resumed file may carry scores of an earlier run's scorers
    for scorer in built:
        scorer.bind(records)
        values = scorer.score([r["prompt"] for r in records], responses)
        if len(values) != len(rows):
            raise ValueError(f"scorer {scorer.name} returned {len(values)} scores for "
                             f"{len(rows)} responses")
        for row, value in zip(rows, values):
            row["scores"][scorer.name] = float(value)
    write_jsonl(out_dir / "generations.jsonl", rows)

    result = {"label": label or _default_label(model_name, out_dir), "model": model_name,
              "prompts": str(source_name), "generation": settings,
              **M.summarize(rows, {s.name: s.kind for s in built}, n_boot=n_boot)}
    result["notes"] = [s.LIMITS for s in built if getattr(s, "LIMITS", None)]
    if given is not None:
        result["answer_logps"] = given
    if reference is not None:
        if not result["reward_scorer"]:
            raise ValueError("a win rate against the reference needs a reward scorer")
        ref_file = Path(reference) / "generations.jsonl"
        if not ref_file.is_file():
            raise FileNotFoundError(f"reference evaluation not found: {ref_file} is missing")
        ref_rows = read_generations(ref_file, complete=True)  # a finished evaluation
        mine, theirs = M.aligned_scores([rows, ref_rows], result["reward_scorer"],
                                        names=[str(out_dir), str(reference)])
        result["win_rate"] = M.win_rate(mine, theirs, n_boot=n_boot)
        result["win_rate_reference"] = str(reference)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_eval_report(result, out_dir)
    return result
