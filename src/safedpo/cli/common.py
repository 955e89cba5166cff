"""What every command shares: the help formatter, and the generation options of ``eval`` and
``pairs`` (one set, one default each). The model check is ``safedpo.models.sources.check_model``
(a missing path, pkg:// file or GGUF file, or a folder without a model, is one line before
anything loads)."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults (not None, nor where the help already names its default) and keep the
    epilog's line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """How answers are generated, for ``safedpo eval`` and ``safedpo pairs`` alike."""
    parser.add_argument("--max-new-tokens", type=int, default=128,
                        help="most tokens per answer")
    parser.add_argument("--max-prompt-length", type=int, default=None,
                        help="cut longer prompts from the left to this many tokens (TRL's "
                             "max_prompt_length; each cut is counted on stderr); prompts are "
                             "always cut to the model's positions less --max-new-tokens")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="prompts per generation/scoring batch (a resumed run must keep it)")
    parser.add_argument("--prompt-template", default=None,
                        help="override the model's prompt template ('auto', 'chat', or a "
                             "string with {prompt})")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "auto"],
                        help="weights dtype of the model and of model scorers "
                             "(default: bfloat16 on a GPU, float32 on a CPU)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
