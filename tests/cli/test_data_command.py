"""`safedpo data`: the JSON and table outputs, the options, and exit code 2 on bad data."""

import csv
import io
import json

import pytest
from helpers import PKU_V1_SMALL, read_jsonl

from safedpo.cli import main

FIXTURE = PKU_V1_SMALL


def run_json(capsys, *args):
    code = main(["data", *map(str, args), "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err  # json.loads fails if stdout holds anything else


def test_json_output(capsys):
    code, stats, _ = run_json(capsys, FIXTURE)
    assert code == 0
    assert {k: stats[k] for k in ("rows", "kept", "swapped", "dropped", "invalid", "pairs")} == {
        "rows": 7, "kept": 4, "swapped": 2, "dropped": 1, "invalid": 0, "pairs": 6}
    assert stats["categories"]["Economic Crime"] == {"rows": 2, "kept": 1, "swapped": 1, "dropped": 0}
    assert stats["errors"] == []


def test_json_output_views_and_ablation(capsys):
    _, stats, _ = run_json(capsys, FIXTURE, "--keep-both-unsafe")
    assert (stats["kept"], stats["swapped"], stats["dropped"], stats["pairs"]) == (5, 2, 0, 7)
    _, stats, _ = run_json(capsys, FIXTURE, "--view", "safebetter")
    assert (stats["view"], stats["kept"], stats["dropped"]) == ("safebetter", 4, 3)


def test_plain_table(capsys):
    assert main(["data", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "  kept                     4" in out and "  dropped                  1" in out
    assert "  invalid (skipped)        0" in out
    assert "Economic Crime           2        1        1        0" in out


def write_bad(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    lines[1] = lines[1].replace('"is_response_0_safe": false', '"is_response_0_safe": "yes"')
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_invalid_data_exits_2_with_message_and_no_traceback(tmp_path, capsys):
    path = write_bad(tmp_path)
    assert main(["data", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"error: file {path}, row 2, column 'is_response_0_safe': "
                   "expected a boolean (true/false, 0/1), got 'yes' (line 2)\n")
    assert main(["data", str(tmp_path / "missing.csv")]) == 2
    assert "no such file or directory: " + str(tmp_path / "missing.csv") in capsys.readouterr().err


def test_skip_invalid_counts(tmp_path, capsys):
    path = write_bad(tmp_path)
    code, stats, err = run_json(capsys, path, "--skip-invalid")
    # row 2 (a swap) is skipped: 7 = 4 kept + 1 swapped + 1 dropped + 1 invalid
    assert code == 0
    assert (stats["rows"], stats["kept"], stats["swapped"], stats["dropped"], stats["invalid"]) == (7, 4, 1, 1, 1)
    assert len(stats["errors"]) == 1 and "row 2, column 'is_response_0_safe'" in stats["errors"][0]
    assert "skipped 1 invalid row(s)" in err


def test_column_map_option(tmp_path, capsys):
    text = FIXTURE.read_text().replace('"prompt":', '"question":').replace('"better_response_id"', '"helpful"')
    path = tmp_path / "renamed.jsonl"
    path.write_text(text)
    code, stats, _ = run_json(capsys, path, "--column-map", "prompt=question", "better_response_id=helpful")
    assert code == 0 and (stats["kept"], stats["swapped"], stats["dropped"]) == (4, 2, 1)
    assert main(["data", str(path), "--json"]) == 2
    assert "row 1, column 'prompt': missing column" in capsys.readouterr().err


def write_unreadable(tmp_path, fmt):
    """The fixture with data row 2 (a swap) unreadable: bad JSON, or a CSV row with an extra field."""
    if fmt == "jsonl":
        lines = FIXTURE.read_text().splitlines()
        lines[1] = "{oops}"
        reason = ("invalid JSON: Expecting property name enclosed in double quotes: "
                  "line 1 column 2 (char 1) (line 2)")
    else:
        records = read_jsonl(FIXTURE)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(records[0]))
        writer.writeheader()
        for r in records:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()})
        lines = text.getvalue().splitlines()
        lines[2] += ",extra"  # line 1 is the header
        reason = f"expected {len(records[0])} fields (as in the header), got {len(records[0]) + 1} (line 3)"
    path = tmp_path / f"unreadable.{fmt}"
    path.write_text("\n".join(lines) + "\n")
    return path, f"file {path}, row 2: {reason}"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_skip_invalid_skips_unreadable_rows(tmp_path, capsys, fmt):
    path, error = write_unreadable(tmp_path, fmt)
    code, stats, err = run_json(capsys, path, "--skip-invalid")
    assert code == 0
    assert (stats["rows"], stats["kept"], stats["swapped"], stats["dropped"], stats["invalid"]) == (7, 4, 1, 1, 1)
    assert stats["errors"] == [error]
    assert err == f"skipped 1 invalid row(s):\n  {error}\n"
    assert main(["data", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {error}\n"


def test_column_missing_from_the_file_fails_even_with_skip_invalid(tmp_path, capsys):
    path = tmp_path / "renamed.csv"
    path.write_text("question,response_0\nHi,Hello\n")
    assert main(["data", str(path), "--json", "--skip-invalid"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: file {path}, column 'prompt': missing column(s) prompt, response_1, ")
    assert "found: question, response_0; " in err and "--column-map CANONICAL=COLUMN" in err
    assert "Not skippable with skip_invalid / --skip-invalid" in err
