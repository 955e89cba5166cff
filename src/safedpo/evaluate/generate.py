"""Prompt sets and batched, resumable generation.

Generation is batched with LEFT padding (so every prompt ends at the same position and new
tokens follow it directly), the tokenizer's padding side is restored afterwards, and only the
new tokens are decoded. Prompts are formatted with ``safedpo.models.prompts.format_prompt`` exactly as
in training. Responses are appended to generations.jsonl one batch at a time, so a crashed run
resumes where it stopped: prompts already in the file are not generated again.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from safedpo.data import load_prompts
from safedpo.data.prompt_sets import BENCHMARKS, check_benchmark_spec, is_benchmark, load_benchmark
from safedpo.data.sources import MAX_PROMPT_CHARS
from safedpo.data.tokenization import _cut_left, encode_prompt, special_prefix
from safedpo.data.types import DataError
from safedpo.models.prompts import format_prompt
from safedpo.world import World


# ----------------------------------------------------------------------------- prompt sets
def _record(item, where: str) -> dict:
    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
        raise DataError(f"expected a non-empty string prompt, got {item!r}", file=where,
                        column="prompt")
    if len(item["prompt"]) > MAX_PROMPT_CHARS:
        raise DataError(f"a prompt of {len(item['prompt']):,} characters; the most a prompt may "
                        f"have is {MAX_PROMPT_CHARS:,}", file=where, column="prompt")
    harmful = item.get("harmful")
    return {"prompt": item["prompt"], "harmful": None if harmful is None else bool(harmful),
            "category": item.get("category")}


def load_prompt_records(source, *, split: str = "test", prompt_column: str = "prompt",
                        world_seed: int = 0, max_prompts: int | None = None) -> list[dict]:
    """The prompts to evaluate, as records {prompt, harmful: bool|None, category}.

    ``source``: a list of prompt strings or dicts; "world" / "world:SEED" (the synthetic world's
    held-out test prompts, or ``split``'s prompts); a public benchmark's name or names joined
    with '+' (``safedpo.data.prompt_sets``: advbench, harmbench, donotanswer, strongreject,
    overrefusal, benign-howto); or anything ``safedpo.data.load_prompts``
    reads (a preference dataset's unique prompts of ``split``, a jsonl/csv of prompts, an
    XSTest-format csv). Duplicate prompts are dropped (first kept) with a printed count.
    ``max_prompts`` keeps the first N.
    """
    if isinstance(source, (list, tuple)):
        items, where = list(source), "<prompts list>"
    elif str(source) == "world" or str(source).startswith("world:"):
        seed = int(str(source).partition(":")[2] or world_seed)
        items = [{"prompt": p.text, "harmful": p.harmful,
                  "category": list(getattr(p, "categories", ()) or [p.category] * bool(p.category))
                  or None} for p in World(seed=seed).prompts(split)]
        where = f"world:{seed} ({split} prompts)"
    elif is_benchmark(source):
        items, where = load_benchmark(source), str(source)
    else:
        check_benchmark_spec(str(source))  # advbench+, advbnch: not tried on the hub
        try:
            items = load_prompts(str(source), split=split, prompt_column=prompt_column)
        except DataError as e:
            if "/" in str(source) or Path(str(source)).exists():
                raise
            # A bare word that is neither a file nor a hub dataset: say what the names are.
            raise DataError(f"{e.reason}; not a prompt benchmark either (known: "
                            f"{', '.join(BENCHMARKS)})", file=e.file, row=e.row,
                            column=e.column) from e
        where = str(source)
    records, seen = [], set()
    for item in items:
        rec = _record(item, where)
        if rec["prompt"] not in seen:
            seen.add(rec["prompt"])
            records.append(rec)
    if len(records) < len(items):
        print(f"[safedpo eval] {where}: dropped {len(items) - len(records)} duplicate prompts")
    if not records:
        raise DataError("no prompts to evaluate", file=where)
    return records[:max_prompts] if max_prompts else records


# ----------------------------------------------------------------------------- generation
def _generation_config(model, tokenizer, *, max_new_tokens: int, do_sample: bool,
                       temperature: float, top_p: float):
    """The model's own generation config (keeps its EOS ids) with our decoding settings."""
    # transformers: slow to import (seconds); only loading a model needs it
    from transformers import GenerationConfig

    gc = copy.deepcopy(getattr(model, "generation_config", None) or GenerationConfig())
    gc.max_new_tokens, gc.max_length = max_new_tokens, None
    gc.do_sample = do_sample
    # Greedy: no sampling knobs. Sampling: plain temperature/top-p (no hidden top-k=50).
    gc.temperature, gc.top_p = (temperature, top_p) if do_sample else (None, None)
    gc.top_k = None
    gc.pad_token_id = tokenizer.pad_token_id
    if gc.eos_token_id is None:
        gc.eos_token_id = tokenizer.eos_token_id
    return gc


def max_prompt_tokens(model, max_new_tokens: int, max_prompt_length: int | None = None
                      ) -> int | None:
    """The most prompt tokens a generation may take: ``max_prompt_length`` when given (TRL's
    name), and never more than the model's positions (config.max_position_embeddings, or
    n_positions) less ``max_new_tokens``; None when neither limits it."""
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None) or \
        getattr(config, "n_positions", None)
    if not isinstance(positions, int) or positions <= 0:
        return max_prompt_length
    if max_new_tokens >= positions:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for the prompt: the "
                         f"model has {positions} positions in all")
    return min(positions - max_new_tokens, max_prompt_length or positions)


def _block_seed(seed: int, start: int) -> int:
    # Seed per block of prompts (with the block generated whole, see iter_generate), so a
    # resumed sampled run equals the uninterrupted one.
    return int(np.random.SeedSequence([seed, start]).generate_state(1)[0])


def iter_generate(model, tokenizer, prompts: Sequence[str], *, indices: Sequence[int] | None = None,
                  prompt_template: str | None = None, system_prompt: str | None = None,
                  max_new_tokens: int = 128, do_sample: bool = False, temperature: float = 1.0,
                  top_p: float = 1.0, seed: int = 0, batch_size: int = 8,
                  response_prefix: str = "", max_prompt_length: int | None = None,
                  progress: bool = True) -> Iterator[tuple[list[int], list[str]]]:
    """Generate responses for ``prompts[i]``, i in ``indices`` (default: all), one batch at a
    time; yields (indices, responses) per batch. Batches are the fixed blocks
    [k*batch_size, (k+1)*batch_size) of the full prompt list, each with its own seed; a block
    holding any prompt asked for is generated WHOLE (a sample depends on the whole batch) and
    only the asked-for responses are yielded. So skipping finished prompts, even part of a
    block after a crash, does not change the others' samples (for the same ``batch_size``).
    ``system_prompt``: a system message for every prompt (see ``format_prompt``).
    ``response_prefix``: text the answer is made to begin with (prefilled after the prompt; the
    response returned includes it), e.g. "I'm sorry, but" for the model's own refusals.
    ``max_prompt_length``: cut longer prompts from the left to this many tokens (always to the
    model's positions less ``max_new_tokens``); each cut is counted in one line on stderr.
    """
    wanted = set(range(len(prompts)) if indices is None else indices)
    starts = sorted({i // batch_size * batch_size for i in wanted})
    saved_side, saved_pad = tokenizer.padding_side, tokenizer.pad_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(wanted), desc="generating", unit="prompt", disable=not progress)
    try:
        gc = _generation_config(model, tokenizer, max_new_tokens=max_new_tokens,
                                do_sample=do_sample, temperature=temperature, top_p=top_p)
        # Prompt ids exactly as in training (special prefix such as BOS once), cut from the
        # LEFT (the end of a prompt, where the question and the answer's start are, is kept,
        # as TRL does) to the model's positions less max_new_tokens; then left-padded.
        limit = max_prompt_tokens(model, max_new_tokens, max_prompt_length)
        prefix = special_prefix(tokenizer)
        block_ids, n_cut = {}, 0
        for start in starts:
            block_ids[start] = []
            for i in range(start, min(start + batch_size, len(prompts))):
                ids = encode_prompt(tokenizer, format_prompt(tokenizer, prompts[i],
                                                             prompt_template, system_prompt)
                                    + response_prefix)
                if limit is not None and len(ids) > limit:
                    head = len(prefix) if prefix and ids[:len(prefix)] == prefix else 0
                    ids, n_cut = _cut_left(ids, limit, min(head, limit - 1)), n_cut + 1
                block_ids[start].append(ids)
        if n_cut:
            why = f"max_prompt_length {max_prompt_length}" if limit == max_prompt_length else \
                f"the model's positions less max_new_tokens {max_new_tokens}"
            print(f"[safedpo] {n_cut} prompts cut to {limit} tokens ({why}; the start of each "
                  "is dropped)", file=sys.stderr)
        for start in starts:
            block = range(start, min(start + batch_size, len(prompts)))
            ids = block_ids.pop(start)
            enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(model.device)
            if do_sample:
                torch.manual_seed(_block_seed(seed, start))
            with torch.inference_mode():
                out = model.generate(input_ids=enc["input_ids"],
                                     attention_mask=enc["attention_mask"], generation_config=gc)
            new_tokens = out[:, enc["input_ids"].shape[1]:]  # (B, new): only generated tokens
            responses = [(response_prefix + r).strip() for r in
                         tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            idx = [i for i in block if i in wanted]
            bar.update(len(idx))
            yield idx, [responses[i - start] for i in idx]
    finally:
        bar.close()
        tokenizer.padding_side = saved_side
        if saved_pad is None:
            tokenizer.pad_token = None
        model.train(was_training)


def generate_responses(model, tokenizer, prompts: Sequence[str], **kwargs) -> list[str]:
    """All responses, in prompt order (see ``iter_generate`` for the options)."""
    out: dict[int, str] = {}
    for idx, responses in iter_generate(model, tokenizer, prompts, **kwargs):
        out.update(zip(idx, responses, strict=True))
    return [out[i] for i in range(len(prompts))]


# ----------------------------------------------------------------------------- the file
def read_generations(path: str | Path, *, repair: bool = False,
                     complete: bool = False) -> list[dict]:
    """Rows of a generations.jsonl. A last line cut short by a crash is ignored (and, with
    ``repair``, cut from the file), or with ``complete`` (a finished evaluation's file) an
    error; a bad line anywhere else is an error naming file and row."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if complete and text and not text.endswith("\n"):
        raise DataError("the last line is cut off (the file was damaged or is still being "
                        "written); run safedpo eval again with --overwrite",
                        file=str(path), row=text.count("\n") + 1)
    if not text.endswith("\n"):  # interrupted mid-write: drop the partial last line
        text = text[: text.rfind("\n") + 1]
        if repair:
            with open(path, "r+b") as f:
                f.truncate(len(text.encode("utf-8")))
    rows = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON ({err})", file=str(path), row=n) from err
        for key in ("index", "prompt", "response"):
            if key not in row:
                raise DataError("missing key", file=str(path), row=n, column=key)
        rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    """Atomic rewrite (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def generate_to_file(model, tokenizer, records: Sequence[dict], path: str | Path,
                     **gen_kwargs) -> list[dict]:
    """Generate a response for every record, appending each finished batch to ``path``
    (jsonl rows: index, prompt, response, harmful, category). Rows already in the file are kept
    and their prompts are NOT generated again. Returns all rows in prompt order."""
    path = Path(path)
    done: dict[int, dict] = {}
    for n, row in enumerate(read_generations(path, repair=True), start=1):
        i = row["index"]
        if not (0 <= i < len(records)) or records[i]["prompt"] != row["prompt"]:
            raise DataError(f"this row (index {i}) was generated for another prompt set; use a "
                            "new output directory or --overwrite", file=str(path), row=n,
                            column="prompt")
        done[i] = row
    todo = [i for i in range(len(records)) if i not in done]
    if done:
        print(f"[safedpo eval] resuming {path}: {len(done)} done, {len(todo)} to generate")
    if todo:
        prompts = [r["prompt"] for r in records]
        with open(path, "a", encoding="utf-8") as f:
            for idx, responses in iter_generate(model, tokenizer, prompts, indices=todo,
                                                **gen_kwargs):
                for i, response in zip(idx, responses, strict=True):
                    done[i] = {"index": i, **records[i], "response": response}
                    f.write(json.dumps(done[i], ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
    return [done[i] for i in range(len(records))]
