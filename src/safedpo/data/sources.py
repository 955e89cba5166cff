"""Read preference data (PKU-SafeRLHF semantics) from a file, a saved dataset or the hub, and
validate every row.

Sources: a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file, a folder written by
``datasets.save_to_disk``, any other folder ``datasets.load_dataset`` can read (e.g. one holding
``train.jsonl`` and ``test.jsonl``), or a hub id (``datasets.load_dataset(id, config, split=...)``).
For a single file, ``split`` is ignored: the file is the split.

Row numbers in errors count DATA rows from 1, in file order (the CSV header and blank JSONL lines
are not rows). For JSONL and CSV the line in the file is added, e.g. ``row 3 ... (line 4)`` for
the third data row of a CSV file with a header.

A row that cannot be read as a record at all (a JSONL line that is not a JSON object, a CSV row
with more or fewer fields than the header, a non-object element of a JSON array) is an error
like any invalid row; with ``skip_invalid`` it is skipped and counted like any invalid row. A
required column missing from the whole schema (CSV header, parquet, datasets) is always an
error: every row would be invalid.
"""

from __future__ import annotations

import ast
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from safedpo.data.types import DataError

SUPPORTED_FORMATS = (".jsonl", ".json", ".parquet", ".csv")
REQUIRED_COLUMNS = ("prompt", "response_0", "response_1", "better_response_id",
                    "safer_response_id", "is_response_0_safe", "is_response_1_safe")
# PKU-SafeRLHF v1 metadata; rows without these columns get None in meta.
OPTIONAL_COLUMNS = ("response_0_harm_category", "response_1_harm_category",
                    "response_0_severity_level", "response_1_severity_level")
# The longest prompt a prompt file may hold (characters): a longer row is refused (one 10 MB
# line once took all the memory of `safedpo pairs`). Generation also cuts every prompt to the
# model's positions (safedpo.evaluate.generate).
MAX_PROMPT_CHARS = 100_000
_FLAG_STRINGS = {"True": True, "true": True, "1": True, "False": False, "false": False, "0": False}


@dataclass(frozen=True)
class PreferenceRow:
    """One validated row with PKU-SafeRLHF semantics. ``is_response_*_safe`` are SAFE flags,
    exactly as the dataset stores them (the paper's h is the opposite).

    ``meta``: ``harm_categories_0``/``_1`` (names of the categories marked true; None when the
    data has no harm-category columns), ``severity_0``/``_1`` (0..3 or None), ``file`` (the
    source label used in errors) and ``row`` (1-based data row).
    """

    prompt: str
    response_0: str
    response_1: str
    better_response_id: int
    safer_response_id: int
    is_response_0_safe: bool
    is_response_1_safe: bool
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def response(self, i: int) -> str:
        return (self.response_0, self.response_1)[i]

    def is_safe(self, i: int) -> bool:
        return (self.is_response_0_safe, self.is_response_1_safe)[i]


@dataclass
class LoadResult:
    """Valid rows, the errors of the rows skipped with ``skip_invalid``, and the source label."""

    rows: list[PreferenceRow]
    invalid: list[DataError]
    source: str


@dataclass
class Table:
    """Raw records of one source. ``columns`` is the schema where the format has one (CSV header,
    parquet, datasets); None for JSON, where each record has its own keys."""

    label: str
    columns: list[str] | None
    records: list[tuple[int, int | None, dict[str, Any]]]  # (data row from 1, file line or None, record)
    # Rows that could not be read as a record, read with ``skip_malformed`` (otherwise they raise).
    malformed: list[DataError] = field(default_factory=list)


# ----------------------------------------------------------------------------- reading

def read_table(source: str | Path, *, split: str = "train", config_name: str | None = None,
               skip_malformed: bool = False) -> Table:
    """Read every record of ``source`` (see the module docstring for what a source can be).

    A row that cannot be read as a record raises ``DataError`` (file, row, line); with
    ``skip_malformed`` its error goes to ``Table.malformed`` instead and reading goes on.
    """
    source = str(source)
    path = Path(source).expanduser()
    if path.is_dir():
        table = _read_dir(path, split, config_name)
    elif path.is_file():
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"unsupported format '{path.suffix}'; supported: "
                            f"{', '.join(SUPPORTED_FORMATS)}, a folder saved with "
                            "datasets.save_to_disk, or a hub dataset id", file=source)
        try:
            table = reader(path, skip_malformed)
        except DataError:
            raise
        except (ValueError, OSError, csv.Error) as e:  # undecodable text, corrupt parquet, ...
            raise DataError(f"cannot read as {path.suffix}: {type(e).__name__}: {e}", file=source) from e
    elif _looks_like_path(source):
        raise FileNotFoundError(f"no such file or directory: {source}")
    else:
        table = _read_hub(source, split, config_name)
    if not table.records and not table.malformed:
        raise DataError("no data rows", file=table.label)
    return table


def _malformed(errors: list[DataError], skip: bool, error: DataError) -> None:
    """Keep the error of a row that is not a record when skipping, else raise it."""
    if not skip:
        raise error
    errors.append(error)


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a missing file.
    suffix = Path(source).suffix.lower()
    return (source.startswith((".", "/", "~")) or source.count("/") > 1
            or suffix in SUPPORTED_FORMATS or (bool(suffix) and "/" not in source))


def _read_jsonl(path: Path, skip_malformed: bool = False) -> Table:
    records, malformed, row = [], [], 0
    with open(path, "rb") as f:  # decoded line by line, so bad bytes get a row and a line
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            row += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _malformed(malformed, skip_malformed, _error(
                    str(path), row, line_no, None,
                    f"not UTF-8 text (byte {raw[e.start]:#04x} at position {e.start + 1} in "
                    "the line); save the file as UTF-8"))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                _malformed(malformed, skip_malformed,
                           _error(str(path), row, line_no, None, f"invalid JSON: {e}"))
                continue
            if not isinstance(record, dict):
                _malformed(malformed, skip_malformed, _error(
                    str(path), row, line_no, None, f"expected a JSON object, got {type(record).__name__}"))
                continue
            records.append((row, line_no, record))
    return Table(str(path), None, records, malformed)


def _read_json(path: Path, skip_malformed: bool = False) -> Table:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e}", file=str(path)) from None
    if not isinstance(data, list):
        raise DataError("expected a JSON array of objects (one per row)", file=str(path))
    records, malformed = [], []
    for i, record in enumerate(data):
        if isinstance(record, dict):
            records.append((i + 1, None, record))
        else:
            _malformed(malformed, skip_malformed, DataError(
                f"expected a JSON object, got {type(record).__name__}", file=str(path), row=i + 1))
    return Table(str(path), None, records, malformed)


def _decode_csv(path: Path) -> str:
    """The text of a CSV file; bytes that are not UTF-8 are an error naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data[:line_start].count(b"\n") + 1
        # rows before the bad line (the header is not a row; blank lines are not rows)
        before = [r for r in csv.reader(io.StringIO(data[:line_start].decode("utf-8-sig"),
                                                    newline="")) if r]
        raise _error(str(path), len(before) if before else None, line, None,
                     f"not UTF-8 text (byte {data[e.start]:#04x} at position "
                     f"{e.start - line_start + 1} in the line); save the file as "
                     "UTF-8") from None


def _read_csv(path: Path, skip_malformed: bool = False) -> Table:
    records, malformed, row = [], [], 0
    with io.StringIO(_decode_csv(path), newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError("empty CSV file (no header)", file=str(path))
        start = reader.line_num + 1
        for values in reader:
            if values:  # blank lines are not rows
                row += 1
                if len(values) == len(header):
                    records.append((row, start, dict(zip(header, values))))
                else:
                    _malformed(malformed, skip_malformed, _error(
                        str(path), row, start, None,
                        f"expected {len(header)} fields (as in the header), got {len(values)}"))
            start = reader.line_num + 1
    return Table(str(path), header, records, malformed)


def _read_parquet(path: Path, skip_malformed: bool = False) -> Table:
    # pyarrow: only parquet files need it (slow to import)
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return Table(str(path), table.column_names,
                 [(i + 1, None, r) for i, r in enumerate(table.to_pylist())])


_READERS: dict[str, Callable[[Path, bool], Table]] = {
    ".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def _from_dataset(ds, label: str) -> Table:
    return Table(label, list(ds.column_names), [(i + 1, None, r) for i, r in enumerate(ds.to_list())])


def _split_label(source: str, split: str, config_name: str | None) -> str:
    config = f"config {config_name}, " if config_name else ""
    return f"{source} ({config}split {split})"


def _read_dir(path: Path, split: str, config_name: str | None) -> Table:
    import datasets  # heavy and only for save_to_disk dirs; keeps --help and jsonl fast

    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"no split '{split}'; splits: {', '.join(ds)}", file=str(path))
            return _from_dataset(ds[split], _split_label(str(path), split, None))
        return _from_dataset(ds, str(path))
    return _read_hub(str(path), split, config_name)


def _read_hub(source: str, split: str, config_name: str | None) -> Table:
    import datasets  # heavy and only for hub datasets; keeps --help and jsonl fast

    label = _split_label(source, split, config_name)
    try:
        ds = datasets.load_dataset(source, config_name, split=split)
    except Exception as e:  # offline, unknown id, unknown split, ...: one clear message
        raise DataError(f"datasets.load_dataset failed: {type(e).__name__}: {e}", file=label) from e
    return _from_dataset(ds, label)


# ----------------------------------------------------------------------------- values

def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {_show(value)}")
    return value


def _binary_id(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return value
    if isinstance(value, str) and value in ("0", "1"):
        return int(value)
    raise ValueError(f"expected 0 or 1, got {_show(value)}")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value in _FLAG_STRINGS:
        return _FLAG_STRINGS[value]
    raise ValueError(f"expected a boolean (true/false, 0/1), got {_show(value)}")


def _missing(value: Any) -> bool:
    # An empty CSV cell or a null is "no value" for the optional v1 metadata columns.
    return value is None or value == ""


def _severity(value: Any) -> int | None:
    if _missing(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return value
    if isinstance(value, str) and value in ("0", "1", "2", "3"):
        return int(value)
    raise ValueError(f"expected a severity level 0..3, got {_show(value)}")


def _categories(value: Any) -> list[str] | None:
    """A dict of harm category -> bool (CSV: a JSON string, or the Python repr pandas writes)
    -> the names marked true, in the dict's order."""
    if _missing(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ValueError(f"expected a dict of harm category -> bool, got {_show(value)}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a dict of harm category -> bool, got {_show(value)}")
    try:
        return [name for name, flag in value.items() if _flag(flag)]
    except ValueError as e:
        raise ValueError(f"harm category dict: {e}") from None


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "prompt": _text, "response_0": _text, "response_1": _text,
    "better_response_id": _binary_id, "safer_response_id": _binary_id,
    "is_response_0_safe": _flag, "is_response_1_safe": _flag,
    "response_0_harm_category": _categories, "response_1_harm_category": _categories,
    "response_0_severity_level": _severity, "response_1_severity_level": _severity,
}


def _error(label: str, row: int | None, line: int | None, column: str | None, reason: str) -> DataError:
    if line is not None:
        reason += f" (line {line})"
    return DataError(reason, file=label, row=row, column=column)


def _field(table: Table, row: int, line: int | None, record: dict, column: str,
           parse: Callable[[Any], Any], *, required: bool = True) -> Any:
    """Parse one cell; a missing key is an error when required, else None."""
    if column not in record:
        if required:
            raise _error(table.label, row, line, column, "missing column")
        return None
    try:
        return parse(record[column])
    except ValueError as e:
        raise _error(table.label, row, line, column, str(e)) from None


def _check_columns(table: Table, columns: Iterable[str], fix: str) -> None:
    """A column missing from the schema fails every row: report it once, even with skip_invalid.
    ``fix`` ends the message: how to use other column names."""
    if table.columns is None:
        return
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; found: {', '.join(table.columns)}; "
                        + fix, file=table.label, column=missing[0])


# ----------------------------------------------------------------------------- loaders

def _column_names(column_map: dict[str, str] | None) -> dict[str, str]:
    """canonical name -> the dataset's column name."""
    column_map = dict(column_map or {})
    unknown = sorted(set(column_map) - set(_PARSERS))
    if unknown:
        raise ValueError(f"column_map: unknown canonical name(s) {', '.join(unknown)}; "
                         f"known: {', '.join(_PARSERS)}")
    return {name: column_map.get(name, name) for name in _PARSERS}


def _parse_row(table: Table, row: int, line: int | None, record: dict, names: dict[str, str]) -> PreferenceRow:
    v = {canon: _field(table, row, line, record, names[canon], parse, required=canon in REQUIRED_COLUMNS)
         for canon, parse in _PARSERS.items()}
    if v["response_0"].strip() == v["response_1"].strip():
        raise _error(table.label, row, line, names["response_1"],
                     f"identical to column '{names['response_0']}' (a pair needs two different responses)")
    meta = {"harm_categories_0": v["response_0_harm_category"],
            "harm_categories_1": v["response_1_harm_category"],
            "severity_0": v["response_0_severity_level"], "severity_1": v["response_1_severity_level"],
            "file": table.label, "row": row}
    return PreferenceRow(*(v[c] for c in REQUIRED_COLUMNS), meta=meta)


def load_rows(source: str | Path, *, split: str = "train", config_name: str | None = None,
              column_map: dict[str, str] | None = None, skip_invalid: bool = False) -> LoadResult:
    """Load and validate preference rows.

    ``column_map`` maps canonical names (``REQUIRED_COLUMNS`` + ``OPTIONAL_COLUMNS``) to the
    dataset's column names; other columns are ignored. A bad row raises ``DataError`` naming
    the source, row and column; with ``skip_invalid`` it is skipped and its error kept in
    ``LoadResult.invalid``. Nothing is coerced beyond the documented spellings.
    """
    names = _column_names(column_map)
    table = read_table(source, split=split, config_name=config_name, skip_malformed=skip_invalid)
    _check_columns(table, [names[c] for c in REQUIRED_COLUMNS],
                   "map the canonical names to yours with column_map {canonical: yours} (safedpo "
                   "data: --column-map CANONICAL=COLUMN, e.g. prompt=question). Not skippable with "
                   "skip_invalid / --skip-invalid: the column is missing from the whole file, so "
                   "every row would be invalid")
    rows, invalid = [], list(table.malformed)
    for row, line, record in tqdm(table.records, desc="validating rows", disable=None, leave=False):
        try:
            rows.append(_parse_row(table, row, line, record, names))
        except DataError as e:
            if not skip_invalid:
                raise
            invalid.append(e)
    invalid.sort(key=lambda e: e.row)  # file order: unreadable rows among the invalid ones
    return LoadResult(rows, invalid, table.label)


def load_sft_examples(source: str | Path, *, split: str = "train", prompt_column: str = "prompt",
                      response_column: str = "response") -> list[tuple[str, str]]:
    """(prompt, response) pairs for supervised fine-tuning; both must be non-empty strings."""
    table = read_table(source, split=split)
    _check_columns(table, [prompt_column, response_column],
                   "name yours with prompt_column / response_column")
    return [(_field(table, row, line, rec, prompt_column, _text),
             _field(table, row, line, rec, response_column, _text))
            for row, line, rec in table.records]


def load_prompts(source: str | Path, *, split: str = "test", prompt_column: str = "prompt") -> list[dict]:
    """Unique prompts, in order of first appearance, as dicts ``{"prompt", ["category"], ["harmful"]}``.

    From a preference dataset (has ``response_0`` and ``response_1``): ``category`` is the list of
    harm categories marked on any response to that prompt (only when the data has harm-category
    columns); ``harmful`` is left out (the data labels responses, not prompts). From a prompt
    file: optional ``category`` (str or list) and ``harmful`` (boolean) columns; XSTest-style
    files with a ``type`` column instead get ``harmful = type.startswith("contrast_")`` and
    ``category = type``.
    """
    table = read_table(source, split=split)
    _check_columns(table, [prompt_column], "name yours with prompt_column")
    columns = table.columns if table.columns is not None else list(table.records[0][2])
    preference = "response_0" in columns and "response_1" in columns
    has_categories = "response_0_harm_category" in columns
    prompts: dict[str, dict] = {}
    for row, line, rec in table.records:
        text = _field(table, row, line, rec, prompt_column, _text)
        if len(text) > MAX_PROMPT_CHARS:
            raise _error(table.label, row, line, prompt_column,
                         f"a prompt of {len(text):,} characters; the most a prompt may have is "
                         f"{MAX_PROMPT_CHARS:,}")
        if preference:
            item = prompts.setdefault(text, {"prompt": text})
            if has_categories:
                categories = item.setdefault("category", [])
                for i in (0, 1):
                    for name in _field(table, row, line, rec, f"response_{i}_harm_category",
                                       _categories, required=False) or []:
                        if name not in categories:
                            categories.append(name)
        elif text not in prompts:
            item = prompts[text] = {"prompt": text}
            kind = rec.get("type")
            if not _missing(rec.get("category")):
                item["category"] = rec["category"]
            elif isinstance(kind, str) and kind:
                item["category"] = kind
            if not _missing(rec.get("harmful")):
                item["harmful"] = _field(table, row, line, rec, "harmful", _flag)
            elif isinstance(kind, str) and kind:
                item["harmful"] = kind.startswith("contrast_")
    return list(prompts.values())
