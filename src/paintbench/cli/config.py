"""`paintbench check-config | plan`: a configuration as the workflow will run it, before anything runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from paintbench.cli.options import add_command


def _configuration(args: argparse.Namespace, preflight: bool = True) -> dict[str, Any]:
    """The effective configuration: the files, each layered over the one before, then the --config overrides (typed
    as Snakemake types them), validated with every default filled in."""
    from paintbench.config import load_config, parse_config_overrides

    return load_config(_files(args), parse_config_overrides(args.config or []), preflight)


def _files(args: argparse.Namespace) -> list[str]:
    return args.configfile or [DEFAULT_CONFIG]


DEFAULT_CONFIG = "config/config.yaml"


def cmd_check_config(args: argparse.Namespace) -> None:
    import yaml

    from paintbench.config import ConfigError
    from paintbench.schema import load_schema

    if args.reference:
        from paintbench.config_reference import reference_markdown

        sys.stdout.write(reference_markdown(load_schema()))
        return
    if args.file:  # the positional form of 0.1 (`check-config FILE ...`)
        args.configfile = [*(args.configfile or []), *args.file]
    try:
        config = _configuration(args)
    except ConfigError as err:
        # Exit 1 with the message naming the key, and no traceback or "failed:" wrapping.
        print(f"{' + '.join(_files(args))}: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False, default_flow_style=False))


def cmd_plan(args: argparse.Namespace) -> None:
    """Counts, hours and disk of a configured run, from measured or published rates (with their sources)."""
    import pandas as pd

    from paintbench.atomic import write_table
    from paintbench.config import resolve_input_path
    from paintbench.plan import estimate

    from paintbench.config import ConfigError
    from paintbench.feature_sets import run_feature_sets
    from paintbench.preflight import preflight

    config = _configuration(args, preflight=False)
    metadata_dir = str(resolve_input_path(config["metadata_dir"]))
    findings = preflight(config, metadata_dir)
    errors = [f.message for f in findings if f.level == "error"]
    if errors:
        raise ConfigError("\n  ".join(["the run cannot succeed:", *errors]))
    table = pd.DataFrame(estimate(config, metadata_dir, args.cells_per_field), dtype=object)
    shown = table.assign(value=table["value"].map(lambda v: f"{v:,}"))
    with pd.option_context("display.max_colwidth", 90, "display.width", 200):
        print(f"{' + '.join(_files(args))}: {len(config['plates'])} plate(s), feature sets "
              f"{', '.join(run_feature_sets(config))}")
        print(shown.to_string(index=False))
    warnings = [f.message for f in findings if f.level == "warning"]
    if warnings:
        print("\nWill run, but weak or incomplete:\n" + "\n".join(f"- {w}" for w in warnings))
    if args.output:
        write_table(table, args.output)


def _config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configfile", nargs="+", action="extend", default=None, metavar="FILE",
                   help=f"the run's YAML configuration file(s), each layered over the one before as Snakemake layers "
                        f"them (default: {DEFAULT_CONFIG})")
    p.add_argument("--config", nargs="*", metavar="KEY=VALUE",
                   help="overrides as for snakemake --config (typed the same way), e.g. plates=paper sites=[1,2]")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "check-config", "print the effective configuration (YAML, every default filled in, plates "
                    "expanded) or, with --reference, the reference of every key; exits 1 naming the invalid key",
                    ["paintbench check-config --configfile config/demo.yaml --config plates=paper",
                     "paintbench check-config --reference > docs/config.md"])
    _config_options(p)
    p.add_argument("--reference", action="store_true",
                   help="print the Markdown reference of every key (name, type, default, description) instead")
    p.add_argument("file", nargs="*", default=None, help="same as --configfile (the 0.1 form)")
    p.set_defaults(func=cmd_check_config)

    p = add_command(sub, "plan", "fields, download, CPU/GPU hours and disk of a run, before it starts",
                    ["paintbench plan --configfile config/config.yaml --config sites=all --output results/plan.tsv"])
    _config_options(p)
    p.add_argument("--cells-per-field", type=float, default=150.0, help="assumed density (real CPJUMP1: 100-300)")
    p.add_argument("--output", default=None, help="also write the table (TSV)")
    p.set_defaults(func=cmd_plan)
