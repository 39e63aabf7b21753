"""How every `paintbench` command describes itself: one-line description, options with their defaults, examples."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs kept as written (one example command per line); an option's default appended to its
    help when it has a real one (not None, False or [], whose "(default: None)" would only be noise)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        stated = "(default" in (action.help or "")  # the help already says it in words
        # identity, not ==: a default of 0 is a real default (0 == False)
        nothing = default is None or default is False or default is argparse.SUPPRESS or default == []
        if stated or action.required or nothing:
            return action.help or ""
        return super()._get_help_string(action)


def add_command(sub: argparse._SubParsersAction, name: str, summary: str, examples: list[str],
                **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose `--help` shows `summary` and its example command lines (file names as the workflow
    writes them)."""
    epilog = "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {line}" for line in examples)
    return sub.add_parser(name, help=summary, description=summary, epilog=epilog, formatter_class=HelpFormatter,
                          **kwargs)


METADATA_HELP = "CPJUMP1 metadata folder (experiment-metadata.tsv, platemaps); default: the bundled config/metadata"


def add_s3_options(group: argparse._ActionsContainer) -> None:
    """Where the Cell Painting Gallery is: the same four options for every command that reads it."""
    group.add_argument("--bucket", default="cellpainting-gallery", help="S3 bucket")
    group.add_argument("--gallery-prefix", default="cpg0000-jump-pilot/source_4", help="key prefix of the dataset")
    group.add_argument("--endpoint-url", default=None, help="S3 endpoint URL (default: AWS)")
    group.add_argument("--signed", action="store_true", help="use AWS credentials instead of anonymous requests")
