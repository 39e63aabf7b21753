"""Docs that cannot rot: every command shown in README.md and docs/*.md is checked against the code.

Every command in a ```bash block is run: Snakemake as a dry run (-n) of the whole plan, `paintbench` commands as
written (on the shared small demo's outputs where they name demo-results/), the test command against .ci/run,
scripts by existence. Every command in inline code (`paintbench query --gene X`) is checked statically: the
program, script or subcommand exists and each --option it uses is one its --help lists. A command that is neither
runnable nor checkable fails the test: give it a rule here, or show it as prose.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # runs every documented command (Snakemake dry runs, the small demo)

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
VENV_BIN = ".venvs/paintbench/bin/"
FENCED = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
COMMAND_START = re.compile(r"^(\.venvs/paintbench/bin/|python -m paintbench |paintbench |python scripts/|snakemake |bash scripts/)")


@dataclass(frozen=True)
class Command:
    doc: str
    tokens: tuple[str, ...]
    fenced: bool

    def __str__(self) -> str:
        return f"{self.doc}: {shlex.join(self.tokens)}"


def _normalized(tokens: list[str]) -> list[str]:
    """`.venvs/paintbench/bin/python` -> `python`, `paintbench X` -> `python -m paintbench X`."""
    tokens = [t.removeprefix(VENV_BIN) for t in tokens]
    if tokens and tokens[0] == "paintbench":
        tokens = ["python", "-m", "paintbench", *tokens[1:]]
    return tokens


def _split_chain(tokens: list[str]) -> list[list[str]]:
    chain, current = [], []
    for token in tokens:
        if token == "&&":
            chain.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*chain, current] if c]


def fenced_commands(doc: Path) -> list[Command]:
    commands = []
    for block in FENCED.findall(doc.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if not tokens or "=" in tokens[0] or tokens[0] == "source":  # `sm=...` aliases, `source env.sh`
                continue
            commands += [Command(doc.name, tuple(_normalized(c)), True) for c in _split_chain(tokens)]
    return commands


def inline_commands(doc: Path) -> list[Command]:
    text = FENCED.sub("", doc.read_text())
    commands = []
    for span in INLINE.findall(text):
        if not COMMAND_START.match(span) or "..." in span:
            continue
        tokens = shlex.split(span.replace("[", " ").replace("]", " "))
        commands += [Command(doc.name, tuple(_normalized(c)), False) for c in _split_chain(tokens)]
    return commands


ALL = [c for doc in DOCS for c in (*fenced_commands(doc), *inline_commands(doc))]


def _run(args: list[str], timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@lru_cache(maxsize=None)
def help_text(program: tuple[str, ...]) -> str:
    result = _run([sys.executable, *program[1:], "--help"] if program[0] == "python" else [*program, "--help"])
    assert result.returncode == 0, f"{shlex.join(program)} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


def _program(command: Command) -> tuple[str, ...]:
    """The part of a command whose --help lists its options: `python -m paintbench query`, `python scripts/x.py`."""
    tokens = command.tokens
    if tokens[:3] == ("python", "-m", "paintbench"):
        return tokens[:4] if len(tokens) > 3 and not tokens[3].startswith("-") else tokens[:3]
    if tokens[0] == "python" and len(tokens) > 1 and tokens[1].startswith("scripts/"):
        return tokens[:2]
    return ()


def test_docs_show_commands():
    assert len([c for c in ALL if c.fenced]) >= 20 and len(ALL) >= 40, [str(c) for c in ALL]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_is_known_and_its_options_exist(doc):
    problems = []
    for command in (*fenced_commands(doc), *inline_commands(doc)):
        tokens = command.tokens
        program = _program(command)
        if tokens[0] == "bash":
            if not (REPO / tokens[1]).is_file():
                problems.append(f"{command}: {tokens[1]} does not exist")
        elif tokens[:2] == ("python", "-c"):
            compile(tokens[2], str(command), "exec")  # a one-liner that needs a GPU to run: its syntax at least
        elif tokens[0] == "snakemake" or tokens[:3] == ("python", "-m", "pytest"):
            continue  # run below (fenced) or Snakemake's own options
        elif tokens == ("lint-imports",):
            continue  # run by tests/test_layers.py
        elif program:
            if program[1].startswith("scripts/") and not (REPO / program[1]).is_file():
                problems.append(f"{command}: {program[1]} does not exist")
                continue
            listed = help_text(program)
            unknown = [t.split("=")[0] for t in tokens if t.startswith("--") and t.split("=")[0] not in listed]
            problems += [f"{command}: option {option} is not in `{shlex.join(program)} --help`" for option in unknown]
        else:
            problems.append(f"{command}: no rule checks this command (tests/test_docs_commands.py)")
    assert not problems, "\n".join(problems)


SHOWN_FILE = re.compile(r"^`([\w./-]+)`[^\n]*\n```\w*\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_files_shown_are_the_files_shipped(doc):
    """A block under a line naming a repository file shows that file's lines as they are (up to a `...` line)."""
    for name, block in SHOWN_FILE.findall(doc.read_text()):
        path = REPO / name
        assert path.is_file(), f"{doc.name} shows {name}, which does not exist"
        shown = block.split("...\n")[0].splitlines()
        lines = path.read_text().splitlines()
        assert any(lines[i:i + len(shown)] == shown for i in range(len(lines))), (
            f"{doc.name}: the block under `{name}` is not a run of that file's lines; update the one or the other")


def test_test_command_is_what_ci_runs():
    """The documented test command is .ci/run's; the development loop is the same without the slow tests."""
    shown = {shlex.join(c.tokens) for c in ALL if c.tokens[:3] == ("python", "-m", "pytest")}
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest tests" in shown and f"{VENV_BIN}python -m pytest tests\n" in ci
    assert shown <= {"python -m pytest tests", "python -m pytest tests -m 'not slow'"}, shown


def test_snakemake_commands_plan(tmp_path):
    """Every Snakemake command of a bash block plans its jobs (a dry run) from the repository root."""
    commands = sorted({c.tokens for c in ALL if c.fenced and c.tokens[0] == "snakemake"})
    assert commands

    def dry_run(tokens: tuple[str, ...]) -> str | None:
        result = _run([sys.executable, "-m", "snakemake", *tokens[1:], "--dry-run", "--quiet", "rules"], timeout=600)
        return None if result.returncode == 0 else f"{shlex.join(tokens)}:\n{result.stdout[-1500:]}{result.stderr[-3000:]}"

    with ThreadPoolExecutor(3) as pool:  # mostly waiting on Snakemake start-up
        failures = [f for f in pool.map(dry_run, commands) if f]
    assert not failures, "\n\n".join(failures)


def test_paintbench_commands_run(small_demo_run, tmp_path):
    """Every `paintbench` command of a bash block runs as written: on the small demo's results where it names
    demo-results/, writing to tmp_path where it names /tmp."""
    _, results = small_demo_run
    failures = []
    for command in sorted({c.tokens for c in ALL if c.fenced and c.tokens[:3] == ("python", "-m", "paintbench")}):
        args = [t.replace("/tmp/", f"{tmp_path}/").replace("demo-results", str(results)) for t in command[1:]]
        result = _run([sys.executable, *args], timeout=300)
        if result.returncode != 0:
            failures.append(f"{shlex.join(command)}:\n{result.stdout[-1000:]}{result.stderr[-3000:]}")
    assert not failures, "\n\n".join(failures)
