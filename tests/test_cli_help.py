"""Every knob of the command line is described: each option has a help text, each command an example."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from paintbench import __version__
from paintbench.cli import build_parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = subcommands(build_parser())


def undescribed_options(parser: argparse.ArgumentParser) -> list[str]:
    """Options and positionals without a help text (hidden deprecated aliases, help=SUPPRESS, are meant to be)."""
    return [action.option_strings[0] if action.option_strings else action.dest for action in parser._actions
            if not action.help]


def test_top_level_options_are_described():
    assert undescribed_options(build_parser()) == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_and_the_command_an_example(name: str):
    command = COMMANDS[name]
    assert undescribed_options(command) == [], f"paintbench {name}: options without help"
    assert command.description, f"paintbench {name}: no description"
    assert "\n" not in command.description.strip(), f"paintbench {name}: description is not one line"
    assert f"paintbench {name} " in (command.epilog or ""), f"paintbench {name}: no example command line in the epilog"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_exits_zero_and_shows_defaults(name: str, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([name, "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "(default: None)" not in shown and "(default: False)" not in shown
    assert "example" in shown


def test_defaults_are_shown():
    shown = " ".join(COMMANDS["vit-pretrain"].format_help().split())  # unwrapped
    assert "(default: 256; config key vit.batch_size)" in shown  # --batch-size, the schema's
    assert "(default: 0; config key vit.seed)" in shown  # --seed: zero is a default, not an absence of one


def test_version():
    done = subprocess.run([sys.executable, "-m", "paintbench", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"paintbench {__version__}" == "paintbench 0.2.0"


def test_every_command_help_runs_as_a_process():
    """The real entry point (imports included), not just the parser object."""
    for name in ("download", "check-config", "vit-pretrain", "report-figures"):
        done = subprocess.run([sys.executable, "-m", "paintbench", name, "--help"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_renamed_options_keep_their_old_names_hidden():
    """report-figures --figures-dir is named after what the workflow calls the folder; 0.1's name still parses
    (hidden from --help). profiles' 0.2 normalization options parse too, and fail saying what replaced them."""
    parser = build_parser()
    figures = ["report-figures", "--results-dir", "r", "--plates", "P", "--summary", "s.tsv", "--feature-sets", "cellprofiler"]
    assert parser.parse_args([*figures, "--out-dir", "f"]).figures_dir == "f"
    assert parser.parse_args([*figures, "--figures-dir", "f"]).figures_dir == "f"
    assert "--out-dir" not in COMMANDS["report-figures"].format_help()
    for old in (["--selected-output", "s.parquet"], ["--scored-output", "s.parquet"], ["--feature-selection"]):
        assert old[0] not in COMMANDS["profiles"].format_help()
        done = subprocess.run([sys.executable, "-m", "paintbench", "profiles", "--wells", "w.parquet", "--output",
                               "n.parquet", *old], capture_output=True, text=True)
        assert done.returncode == 3 and f"profiles --{old[0][2:]}" in done.stderr and "profile-chain" in done.stderr


def test_check_config_keeps_its_positional_form():
    from tests.helpers import REPO

    done = subprocess.run([sys.executable, "-m", "paintbench", "check-config", str(REPO / "config" / "demo.yaml")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "source: synthetic" in done.stdout, done.stderr
