"""The ``safedpo`` command. Each subcommand lives in its own module, imported lazily so that
``safedpo --help`` stays fast: the module defines ``add_arguments(name, parser)`` and
``run(name, args) -> int``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys

from safedpo import __version__
from safedpo.cli.common import HelpFormatter
from safedpo.heap import reexec_with_heap_tunables
from safedpo.train.engines import ENGINES

# name -> (module, one-line help). The module owns its arguments and its run(). The training
# commands are the engines of safedpo.train.engines.ENGINES (their help comes from there).
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("safedpo.cli.data", "show what the safety transformation does to a dataset"),
    **{name: ("safedpo.cli.train", e.help) for name, e in ENGINES.items()},
    "sacpo": ("safedpo.cli.compare", "SACPO: DPO on helpfulness, then on harmlessness"),
    "sweep": ("safedpo.cli.compare", "train one method over several values of Delta"),
    "eval": ("safedpo.cli.evaluate", "generate answers for a prompt set and score them"),
    "pairs": ("safedpo.cli.pairs", "on-policy safety pairs from an instruct model (PKU-SafeRLHF "
              "schema)"),
    "report": ("safedpo.cli.evaluate", "one table and one plot over many evaluated runs"),
    "compare": ("safedpo.cli.compare", "train, evaluate and report several methods on the "
                "same data"),
    "demo": ("safedpo.cli.demo", "the whole pipeline on the synthetic safety world, on a CPU"),
}


def _load(name: str):
    module = importlib.import_module(COMMANDS[name][0])
    return module


def _accept_both_spellings(parser: argparse.ArgumentParser) -> None:
    """Accept ``--max_new_tokens`` and ``--max-new-tokens`` alike: training options use TRL's
    underscore names, some others read better with dashes; users should not have to remember."""
    for action in parser._actions:
        for opt in list(action.option_strings):
            if not opt.startswith("--"):
                continue
            for alt in ("--" + opt[2:].replace("-", "_"), "--" + opt[2:].replace("_", "-")):
                parser._option_string_actions.setdefault(alt, action)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safedpo",
        description="Align language models to be helpful AND safe with SafeDPO, and compare "
        "against DPO, SACPO and other baselines on one interface.",
        epilog="Run 'safedpo COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"safedpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported (others may need heavy libraries).
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=HelpFormatter)
        if name == chosen:
            _load(name).add_arguments(name, p)
            _accept_both_spellings(p)
    return parser


def _unknown_options_message(parser: argparse.ArgumentParser, command: str | None,
                             unknown: list[str]) -> str:
    """argparse's 'unrecognized arguments', plus the closest real options."""
    known: list[str] = []
    if command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        known = [o for a in sub.choices[command]._actions for o in a.option_strings
                 if o.startswith("--")]
    options = [a for a in unknown if a.startswith("-")]
    lines = [] if options else [f"unexpected argument(s): {' '.join(unknown)}"]
    for arg in options:  # the values that followed an unknown option are not reported
        opt = arg.split("=", 1)[0]
        close = difflib.get_close_matches(opt, known, n=3) if opt.startswith("--") else []
        lines.append(f"unknown option {arg!r}" + (f"; did you mean {', '.join(close)}?" if close
                                                   else ""))
    where = f"safedpo {command}" if command else "safedpo"
    return f"{where}: error: " + "\n".join(lines) + f"\nSee '{where} --help'.\n"


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line: restart once with glibc's small-block caches off
        reexec_with_heap_tunables()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.exit(2, _unknown_options_message(parser, args.command, unknown))
    if not args.command:
        parser.print_help()
        return 2
    return int(_load(args.command).run(args.command, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
