"""`paintbench STAGE ...`: the one command line every Snakemake rule calls.

One module per stage family, named after the rule file it serves (download, illum, cellprofiler, vit, profiles,
retrieval, target_id, report) plus config (check-config, plan). Each rule's log starts with the exact command, so
any stage can be rerun by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from paintbench.cli import (cellprofiler, config, download, finetune, illum, profiles, report, retrieval, target_id,
                            vit)
from paintbench.cli.options import HelpFormatter

log = logging.getLogger("paintbench")

STAGES = (download, illum, cellprofiler, vit, finetune, profiles, retrieval, target_id, report, config)
# Errors of the input or the configuration: one line that names the file, plate or key is the whole message, and
# the exit code DETERMINISTIC_EXIT: the same command fails the same way until the input changes. Anything else is a
# bug or a transient failure (network, memory, a preempted job), keeps its traceback, and may be retried.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, RuntimeError)
DETERMINISTIC_EXIT = 3
FAILED_DIR = Path(".paintbench") / "failed"  # under the working directory: what a retry must not run again


def transient(error: BaseException) -> bool:
    """An expected error a retry can cure: a GPU out of memory beside other jobs."""
    return type(error).__name__ == "OutOfMemoryError"


def failure_marker(argv: list[str]) -> Path:
    return FAILED_DIR / hashlib.sha1("\0".join(argv).encode()).hexdigest()


def build_parser() -> argparse.ArgumentParser:
    from paintbench import __version__

    parser = argparse.ArgumentParser(prog="paintbench", description=__doc__.splitlines()[0], formatter_class=HelpFormatter,
                                     epilog="`paintbench COMMAND --help` describes a command, with an example.")
    parser.add_argument("--version", action="version", version=f"paintbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, also log its traceback (as does PAINTBENCH_DEBUG=1 in the environment)")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="COMMAND", help="the stage to run")
    for stage in STAGES:
        stage.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("PAINTBENCH_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose or debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.info("rerun this stage with: %s", shlex.join(["python", "-m", "paintbench", *argv]))
    # Under Snakemake (PAINTBENCH_ATTEMPT: the rule's attempt), a retry of a command whose first attempt failed on its
    # input or configuration stops at once: the profiles' retries are for transient failures.
    attempt = int(os.environ.get("PAINTBENCH_ATTEMPT") or 0)
    marker = failure_marker(argv)
    if attempt > 1 and marker.is_file():
        log.error("%s failed: not retried (attempt %d): the first attempt failed on an error a rerun cannot change: "
                  "%s", args.stage, attempt, marker.read_text())
        return DETERMINISTIC_EXIT
    if attempt == 1:
        marker.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        args.func(args)
    except EXPECTED_ERRORS as err:
        if debug or transient(err):
            log.exception("%s failed:", args.stage)
        log.error("%s failed: %s", args.stage, err)
        if transient(err):
            return 1
        if not debug:
            log.info("for the traceback, rerun with: python -m paintbench --debug %s", shlex.join(argv))
        if attempt:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(err))
        return DETERMINISTIC_EXIT
    log.info("%s finished in %.1f s", args.stage, time.perf_counter() - started)
    return 0
