import subprocess
import sys

import pytest

from safedpo.cli import COMMANDS, build_parser, main


def test_help_lists_every_command(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage: safedpo " + name in capsys.readouterr().out


def test_dash_and_underscore_spellings_are_the_same_option():
    parser = build_parser(["eval"])
    a = parser.parse_args(["eval", "--model", "m", "--prompts", "p", "--max-new-tokens", "7"])
    b = parser.parse_args(["eval", "--model", "m", "--prompts", "p", "--max_new_tokens", "7"])
    assert a.max_new_tokens == b.max_new_tokens == 7
    parser = build_parser(["train"])
    args = parser.parse_args(["train", "--learning-rate", "0.5"])
    assert vars(args)["learning_rate"] in (0.5, "0.5")


def test_console_script_help_is_fast_and_works():
    out = subprocess.run([sys.executable, "-m", "safedpo.cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "SafeDPO" in out.stdout


def test_no_command_help_imports_a_heavy_library():
    """`safedpo COMMAND --help` for every command, in one fresh interpreter: none of them may
    load torch & co. (seconds each; they are imported when a command runs)."""
    heavy = ("torch", "transformers", "accelerate", "matplotlib", "datasets")
    code = ("import contextlib, io, sys\n"
            "from safedpo.cli import COMMANDS, main\n"
            "for name in COMMANDS:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            main([name, '--help'])\n"
            "        except SystemExit as e:\n"
            "            assert e.code == 0, name\n"
            f"    print(name, *[m for m in {heavy!r} if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.splitlines() == list(COMMANDS)


def test_unknown_option_names_it_and_suggests_the_closest(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--betta", "0.1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown option '--betta'" in err and "did you mean --beta" in err
