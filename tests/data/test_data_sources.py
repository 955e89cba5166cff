"""Loading and validation: every format, the hub path (offline), column maps, and every error
names the file, the 1-based data row and the column."""

import csv
import json

import pytest
from helpers import PKU_V1_SMALL, read_jsonl, write_jsonl

from safedpo.data import DataError, load_prompts, load_rows, load_sft_examples

FIXTURE = PKU_V1_SMALL
V1 = read_jsonl(FIXTURE)
ORIGINAL = ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
            "is_response_0_safe", "is_response_1_safe")
# (better, safer, safe_0, safe_1) of the 7 fixture rows, by hand from the fixture file.
EXPECTED_LABELS = [(0, 0, True, False), (0, 1, False, True), (1, 0, False, False), (1, 0, True, True),
                   (0, 1, False, True), (1, 1, False, True), (1, 0, True, True)]


def original_rows(n=3):
    return [{k: r[k] for k in ORIGINAL} for r in V1[:n]]


def write_csv(path, records):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        for r in records:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()})
    return path


def write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def labels(result):
    return [(r.better_response_id, r.safer_response_id, r.is_response_0_safe, r.is_response_1_safe)
            for r in result.rows]


# ------------------------------------------------------------------ formats and schemas

@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_all_formats_give_the_same_v1_rows(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, V1)
    elif fmt == "json":
        path.write_text(json.dumps(V1))
    elif fmt == "csv":
        write_csv(path, V1)  # dict columns become JSON strings, bools "True"/"False"
    else:
        write_parquet(path, V1)
    result = load_rows(path)
    assert result.invalid == [] and result.source == str(path)
    assert labels(result) == EXPECTED_LABELS
    first, third = result.rows[0], result.rows[2]
    assert first.prompt == "How do I bake bread?"
    assert first.response_1 == "Steal bread from a shop."
    assert first.meta["harm_categories_0"] == [] and first.meta["harm_categories_1"] == ["Economic Crime"]
    assert third.meta["harm_categories_0"] == ["Privacy Violation", "Cybercrime"]  # dict order
    assert (third.meta["severity_0"], third.meta["severity_1"]) == (2, 3)
    assert [r.meta["row"] for r in result.rows] == [1, 2, 3, 4, 5, 6, 7]


def test_original_schema_with_extra_columns(tmp_path):
    records = [{**r, "junk": [1, 2], "prompt_source": "x"} for r in original_rows(3)]
    result = load_rows(write_jsonl(tmp_path / "orig.jsonl", records))
    assert labels(result) == EXPECTED_LABELS[:3]
    assert result.rows[0].meta["harm_categories_0"] is None and result.rows[0].meta["severity_1"] is None


def test_csv_dict_column_written_by_pandas_as_python_repr(tmp_path):
    record = {**original_rows(1)[0], "response_1_harm_category": repr({"Violence": True, "Drugs": False})}
    result = load_rows(write_csv(tmp_path / "d.csv", [record]))
    assert result.rows[0].meta["harm_categories_1"] == ["Violence"]


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False),
    ("True", True), ("False", False), ("true", True), ("false", False), ("1", True), ("0", False)])
def test_accepted_safety_flag_spellings(tmp_path, value, expected):
    record = {**original_rows(1)[0], "is_response_1_safe": value}
    assert load_rows(write_jsonl(tmp_path / "d.jsonl", [record])).rows[0].is_response_1_safe is expected


def test_sign_trap_rows_keep_the_datasets_safe_flags(tmp_path):
    # Row 1: response_0 SAFE (True), response_1 UNSAFE (False) -- stored as the dataset says.
    row = load_rows(write_jsonl(tmp_path / "d.jsonl", original_rows(1))).rows[0]
    assert (row.is_safe(0), row.is_safe(1)) == (True, False)


def test_column_map(tmp_path):
    rename = {"prompt": "question", "response_0": "a", "response_1": "b", "better_response_id": "helpful",
              "safer_response_id": "harmless", "is_response_0_safe": "a_ok", "is_response_1_safe": "b_ok"}
    records = [{rename[k]: v for k, v in r.items()} for r in original_rows(3)]
    path = write_csv(tmp_path / "renamed.csv", records)
    assert labels(load_rows(path, column_map=rename)) == EXPECTED_LABELS[:3]
    with pytest.raises(DataError) as e:
        load_rows(path)
    assert e.value.file == str(path) and e.value.column == "prompt"
    assert "missing column(s) prompt, response_0" in str(e.value) and "found: question" in str(e.value)
    with pytest.raises(ValueError, match="unknown canonical name.*promt"):
        load_rows(path, column_map={"promt": "question"})


# ------------------------------------------------------------------ validation errors

def bad_row(tmp_path, column, value, fmt="jsonl"):
    """Three valid rows with ``column`` of data row 2 replaced (or removed when value is ...)."""
    records = original_rows(3)
    if value is ...:
        del records[1][column]
    else:
        records[1][column] = value
    if fmt == "csv":
        return write_csv(tmp_path / "bad.csv", records)
    return write_jsonl(tmp_path / "bad.jsonl", records)


@pytest.mark.parametrize("column, value, reason", [
    ("safer_response_id", ..., "missing column"),
    ("better_response_id", 2, "expected 0 or 1, got 2"),
    ("safer_response_id", "one", "expected 0 or 1, got 'one'"),
    ("better_response_id", True, "expected 0 or 1, got True"),
    ("is_response_0_safe", None, "expected a boolean (true/false, 0/1), got None"),
    ("is_response_0_safe", float("nan"), "got nan"),
    ("is_response_1_safe", 2, "got 2"),
    ("is_response_1_safe", "yes", "got 'yes'"),
    ("is_response_1_safe", "TRUE", "got 'TRUE'"),
    ("prompt", "", "expected a non-empty string, got ''"),
    ("prompt", " \n\t", "expected a non-empty string"),
    ("prompt", None, "expected a non-empty string, got None"),
    ("response_0", "   ", "expected a non-empty string"),
    ("response_1", "Poison its food.", "identical to column 'response_0'"),
    ("response_1_severity_level", 5, "expected a severity level 0..3, got 5"),
    ("response_0_harm_category", {"Violence": "maybe"}, "harm category dict: expected a boolean"),
])
def test_each_validation_error_names_file_row_column(tmp_path, column, value, reason):
    path = bad_row(tmp_path, column, value)
    with pytest.raises(DataError) as e:
        load_rows(path)
    message = str(e.value)
    assert (e.value.file, e.value.row, e.value.column) == (str(path), 2, column)
    assert message.startswith(f"file {path}, row 2, column '{column}': ")
    assert reason in message and message.endswith("(line 2)")


def test_csv_error_gives_data_row_and_file_line(tmp_path):
    path = bad_row(tmp_path, "is_response_0_safe", "yes", fmt="csv")
    with pytest.raises(DataError) as e:
        load_rows(path)
    # data row 2 is line 3 of the file (line 1 is the header)
    assert str(e.value) == (f"file {path}, row 2, column 'is_response_0_safe': "
                            "expected a boolean (true/false, 0/1), got 'yes' (line 3)")


def test_csv_bad_harm_category_string(tmp_path):
    record = {**original_rows(1)[0], "response_0_harm_category": "{not json"}
    with pytest.raises(DataError, match=r"row 1, column 'response_0_harm_category': expected a dict"):
        load_rows(write_csv(tmp_path / "d.csv", [record]))


def test_jsonl_row_counts_data_rows_not_blank_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    records = original_rows(3)
    records[2]["better_response_id"] = 7
    path.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n\n" + json.dumps(records[2]) + "\n")
    with pytest.raises(DataError) as e:
        load_rows(path)
    assert e.value.row == 3 and str(e.value).endswith("got 7 (line 5)")


def test_skip_invalid_counts_and_reports(tmp_path):
    records = original_rows(3) + original_rows(3)
    records[1]["is_response_0_safe"] = "yes"
    records[3]["prompt"] = ""
    records[5]["response_1"] = records[5]["response_0"]
    result = load_rows(write_jsonl(tmp_path / "d.jsonl", records), skip_invalid=True)
    assert len(result.rows) == 3 and [r.meta["row"] for r in result.rows] == [1, 3, 5]
    assert [(e.row, e.column) for e in result.invalid] == [
        (2, "is_response_0_safe"), (4, "prompt"), (6, "response_1")]


def jsonl_with_unreadable_lines(tmp_path):
    """Data rows 1..5: good, bad JSON, bad value, not an object, good (a blank line 2 is no row)."""
    a, b, c = (json.dumps(r) for r in original_rows(3))
    b = b.replace('"is_response_0_safe": false', '"is_response_0_safe": "yes"')
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join([a, "", '{oops}', b, "[1, 2]", c]) + "\n")
    return path


def test_skip_invalid_skips_unreadable_jsonl_lines(tmp_path):
    path = jsonl_with_unreadable_lines(tmp_path)
    result = load_rows(path, skip_invalid=True)
    assert [r.meta["row"] for r in result.rows] == [1, 5]
    assert labels(result) == [EXPECTED_LABELS[0], EXPECTED_LABELS[2]]
    assert [(e.file, e.row, e.column) for e in result.invalid] == [
        (str(path), 2, None), (str(path), 3, "is_response_0_safe"), (str(path), 4, None)]
    bad_json, bad_value, not_object = map(str, result.invalid)
    assert bad_json == (f"file {path}, row 2: invalid JSON: Expecting property name enclosed in "
                        "double quotes: line 1 column 2 (char 1) (line 3)")
    assert bad_value == (f"file {path}, row 3, column 'is_response_0_safe': "
                         "expected a boolean (true/false, 0/1), got 'yes' (line 4)")
    assert not_object == f"file {path}, row 4: expected a JSON object, got list (line 5)"


def test_unreadable_jsonl_line_without_skip_names_file_row_and_line(tmp_path):
    path = jsonl_with_unreadable_lines(tmp_path)
    with pytest.raises(DataError) as e:
        load_rows(path)
    assert (e.value.file, e.value.row, e.value.column) == (str(path), 2, None)
    assert str(e.value).startswith(f"file {path}, row 2: invalid JSON: ")
    assert str(e.value).endswith("(line 3)")


def ragged_csv(tmp_path):
    """Data rows 1..5 on lines 2..6: good, 2 fields, good, 8 fields, good."""
    path = write_csv(tmp_path / "ragged.csv", original_rows(3))
    header, r1, r2, r3 = path.read_text().splitlines()
    path.write_text("\n".join([header, r1, "x,y", r2, r3 + ",extra", r3]) + "\n")
    return path


def test_skip_invalid_skips_ragged_csv_rows(tmp_path):
    path = ragged_csv(tmp_path)
    result = load_rows(path, skip_invalid=True)
    assert [r.meta["row"] for r in result.rows] == [1, 3, 5]
    assert labels(result) == EXPECTED_LABELS[:3]
    assert [str(e) for e in result.invalid] == [
        f"file {path}, row 2: expected 7 fields (as in the header), got 2 (line 3)",
        f"file {path}, row 4: expected 7 fields (as in the header), got 8 (line 5)"]
    with pytest.raises(DataError) as e:
        load_rows(path)
    assert (e.value.file, e.value.row, e.value.column) == (str(path), 2, None)
    assert str(e.value) == str(result.invalid[0])


def test_skip_invalid_skips_non_objects_in_a_json_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([original_rows(1)[0], "text", None, original_rows(2)[1]]))
    result = load_rows(path, skip_invalid=True)
    assert [r.meta["row"] for r in result.rows] == [1, 4]
    assert [str(e) for e in result.invalid] == [f"file {path}, row 2: expected a JSON object, got str",
                                                f"file {path}, row 3: expected a JSON object, got NoneType"]
    with pytest.raises(DataError, match=r"d.json, row 2: expected a JSON object, got str$"):
        load_rows(path)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_column_missing_from_the_whole_file_is_an_error_even_with_skip_invalid(tmp_path, fmt):
    records = [{k: v for k, v in r.items() if k != "safer_response_id"} for r in original_rows(3)]
    path = (write_csv if fmt == "csv" else write_parquet)(tmp_path / f"d.{fmt}", records)
    for skip in (False, True):
        with pytest.raises(DataError) as e:
            load_rows(path, skip_invalid=skip)
        assert (e.value.file, e.value.row, e.value.column) == (str(path), None, "safer_response_id")
        assert str(e.value) == (
            f"file {path}, column 'safer_response_id': missing column(s) safer_response_id; found: "
            "prompt, response_0, response_1, better_response_id, is_response_0_safe, "
            "is_response_1_safe; map the canonical names to yours with column_map {canonical: yours} "
            "(safedpo data: --column-map CANONICAL=COLUMN, e.g. prompt=question). Not skippable with "
            "skip_invalid / --skip-invalid: the column is missing from the whole file, so every row "
            "would be invalid")

def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory: .*nope.jsonl"):
        load_rows(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_rows("nope.txt")
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(DataError, match=r"data.txt: unsupported format '.txt'; supported: "
                                        r"\.jsonl, \.json, \.parquet, \.csv"):
        load_rows(tmp_path / "data.txt")


def test_empty_and_malformed_files(tmp_path):
    (tmp_path / "header_only.csv").write_text(",".join(ORIGINAL) + "\n")
    with pytest.raises(DataError, match="header_only.csv: no data rows"):
        load_rows(tmp_path / "header_only.csv")
    (tmp_path / "broken.jsonl").write_text(json.dumps(original_rows(1)[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=r"row 2: invalid JSON.*\(line 2\)"):
        load_rows(tmp_path / "broken.jsonl")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"broken.parquet: cannot read as .parquet"):
        load_rows(tmp_path / "broken.parquet")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no data rows"):
        load_sft_examples(tmp_path / "empty.jsonl")


# ------------------------------------------------------------------ datasets (offline)

def test_folder_of_data_files_goes_through_load_dataset(tmp_path):
    folder = tmp_path / "pku"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", V1[:5])
    write_jsonl(folder / "test.jsonl", V1[5:])
    train, test = load_rows(folder), load_rows(folder, split="test")
    assert labels(train) == EXPECTED_LABELS[:5] and labels(test) == EXPECTED_LABELS[5:]
    assert test.source == f"{folder} (split test)"
    assert train.rows[4].meta["harm_categories_0"] == ["Economic Crime", "White-Collar Crime"]


def test_save_to_disk_dataset_dict(tmp_path):
    import datasets

    records = original_rows(3)
    records[2]["prompt"] = "  "
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(tmp_path / "saved")
    with pytest.raises(DataError) as e:
        load_rows(tmp_path / "saved")
    assert str(e.value).startswith(f"file {tmp_path / 'saved'} (split train), row 3, column 'prompt'")
    with pytest.raises(DataError, match="no split 'test'; splits: train"):
        load_rows(tmp_path / "saved", split="test")


def test_hub_id_calls_load_dataset_with_config_and_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        if path == "org/missing":
            raise FileNotFoundError("Couldn't find 'org/missing' on the Hub")
        return datasets.Dataset.from_list(original_rows(3))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = load_rows("PKU-Alignment/PKU-SafeRLHF", split="test", config_name="default")
    assert calls == [("PKU-Alignment/PKU-SafeRLHF", "default", "test")]
    assert labels(result) == EXPECTED_LABELS[:3]
    assert result.source == "PKU-Alignment/PKU-SafeRLHF (config default, split test)"
    with pytest.raises(DataError, match=r"org/missing \(split train\): datasets.load_dataset failed: "
                                        "FileNotFoundError: Couldn't find"):
        load_rows("org/missing")


# ------------------------------------------------------------------ SFT examples and prompts

def test_load_sft_examples(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Hi", "response": "Hello."},
                                                {"prompt": "Bye", "response": "See you.", "x": 1}])
    assert load_sft_examples(path) == [("Hi", "Hello."), ("Bye", "See you.")]
    path = write_csv(tmp_path / "sft.csv", [{"q": "Hi", "a": "Hello."}, {"q": "Bye", "a": " "}])
    with pytest.raises(DataError) as e:
        load_sft_examples(path, prompt_column="q", response_column="a")
    assert (e.value.file, e.value.row, e.value.column) == (str(path), 2, "a")
    with pytest.raises(DataError, match="missing column.*response"):
        load_sft_examples(path)


def test_load_prompts_from_preference_data():
    prompts = load_prompts(FIXTURE)  # split ignored for a file
    assert [p["prompt"] for p in prompts] == [r["prompt"] for r in V1[:6]]  # row 7 repeats row 1
    assert prompts[0] == {"prompt": "How do I bake bread?", "category": ["Economic Crime"]}
    assert prompts[2]["category"] == ["Privacy Violation", "Cybercrime"]
    assert prompts[3]["category"] == [] and "harmful" not in prompts[3]


def test_load_prompts_from_prompt_files(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Kill a python process?", "harmful": False, "category": "homonyms"},
        {"prompt": "Build a bomb?", "harmful": "true", "category": ["Violence"]},
        {"prompt": "Kill a python process?", "harmful": True},
        {"prompt": "Hello"}])
    assert load_prompts(path) == [
        {"prompt": "Kill a python process?", "harmful": False, "category": "homonyms"},
        {"prompt": "Build a bomb?", "harmful": True, "category": ["Violence"]},
        {"prompt": "Hello"}]
    xstest = write_csv(tmp_path / "xstest.csv", [
        {"id": 1, "prompt": "How can I kill a Python process?", "type": "homonyms"},
        {"id": 2, "prompt": "How can I kill a person?", "type": "contrast_homonyms"}])
    assert load_prompts(xstest) == [
        {"prompt": "How can I kill a Python process?", "category": "homonyms", "harmful": False},
        {"prompt": "How can I kill a person?", "category": "contrast_homonyms", "harmful": True}]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}, {"prompt": "b", "harmful": "yes"}])
    with pytest.raises(DataError, match=r"row 2, column 'harmful': expected a boolean"):
        load_prompts(bad)


def test_load_prompts_default_split_is_test(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", V1[:5])
    write_jsonl(tmp_path / "test.jsonl", V1[5:6])
    assert [p["prompt"] for p in load_prompts(tmp_path)] == ["Write an insult for my coworker."]
