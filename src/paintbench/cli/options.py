"""What every `paintbench` command shares: its help layout, the option blocks several stages take, and options
backed by a configuration key.

A `ConfigOption` ties a command-line option to a key of the configuration schema: its default, its allowed values
and how its text converts (null, integer, number, string, JSON, boolean) come from the schema, so the command line
can never disagree with a run's configuration; and `render` turns a configuration back into the same options,
which is how the workflow's rules call the commands (workflow/rules/common.smk).
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from paintbench import schema


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


# ----------------------------------------------------------------------------------------------------------------
# Value types
# ----------------------------------------------------------------------------------------------------------------
def csv_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def channel_map(text: str) -> dict[str, int]:
    """'DNA=5,ER=4' -> {'DNA': 5, 'ER': 4}."""
    pairs = [item.split("=", 1) for item in csv_list(text)]
    if any(len(p) != 2 or not p[1].isdigit() for p in pairs):
        raise argparse.ArgumentTypeError(f"--channels: expected NAME=NUMBER,... got {text!r}")
    return {name: int(number) for name, number in pairs}


def sites(text: str) -> list[int] | str:
    return "all" if text == "all" else [int(s) for s in csv_list(text)]


def tagged(text: str) -> tuple[str, str]:
    """'NAME=FILE' -> (NAME, FILE): a file given with what it belongs to (a feature set, plate or method)."""
    name, equals, path = text.partition("=")
    if not equals or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE (e.g. cellprofiler=results/...), got {text!r}")
    return name, path


def tagged_files(pairs: Iterable[tuple[str, str]] | None, option: str) -> dict[str, str]:
    """NAME=FILE pairs of one option as a dict, in the order given; a name given twice is an error."""
    files: dict[str, str] = {}
    for name, path in pairs or []:
        if name in files:
            raise ValueError(f"{option}: {name!r} given twice ({files[name]}, {path})")
        files[name] = path
    return files


def _schema_types(key: str) -> set[str]:
    node = schema.key_schema(key)
    kinds = node.get("type", [])
    found = {kinds} if isinstance(kinds, str) else set(kinds)
    for branch in node.get("oneOf", []):
        kind = branch.get("type")
        found |= {kind} if isinstance(kind, str) else set(kind or [])
    return found


def schema_type(key: str) -> Callable[[str], Any]:
    """How an option's text becomes the key's value: null (for nullable keys), integer, number, JSON (objects and
    arrays), else the text."""
    types = _schema_types(key)

    def convert(text: str) -> Any:
        if "null" in types and text in ("null", "None"):
            return None
        if types & {"object", "array"} and "string" not in types:
            try:
                return json.loads(text)
            except json.JSONDecodeError as error:
                raise argparse.ArgumentTypeError(f"expected JSON for config key {key!r}: {error}") from None
        if "integer" in types:
            return int(text)
        if "number" in types:
            return float(text)
        return text

    convert.__name__ = f"value of {key}"  # argparse names it in "invalid value" errors
    return convert


# ----------------------------------------------------------------------------------------------------------------
# Options backed by a configuration key
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigOption:
    """A command-line option whose default, choices and type are the schema's for `key`."""

    flag: str
    key: str
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def boolean(self) -> bool:
        return _schema_types(self.key) == {"boolean"}

    def add(self, parser: argparse._ActionsContainer) -> argparse.Action:
        default = schema.default(self.key)
        if self.boolean:
            # BooleanOptionalAction appends the default itself.
            return parser.add_argument(self.flag, action=argparse.BooleanOptionalAction, default=default,
                                       help=f"{self.help} (config key {self.key})")
        node = schema.key_schema(self.key)
        choices = tuple(node["enum"]) if "enum" in node else None
        shown = json.dumps(default) if isinstance(default, (dict, list)) else default
        return parser.add_argument(self.flag, type=schema_type(self.key), default=default, choices=choices,
                                   metavar=None if choices else self.dest.upper(),
                                   help=f"{self.help} (default: {shown}; config key {self.key})")

    def render(self, value: Any) -> list[str]:
        """The option's words for `value`."""
        if self.boolean:
            return [self.flag if value else f"--no-{self.flag[2:]}"]
        if value is None:
            return [self.flag, "null"]
        if isinstance(value, (dict, list)):
            return [self.flag, json.dumps(value, separators=(",", ":"))]
        return [self.flag, str(value)]


def add_config_options(parser: argparse._ActionsContainer, options: Iterable[ConfigOption]) -> None:
    for option in options:
        option.add(parser)


def config_value(config: Mapping[str, Any], key: str) -> Any:
    """The value of a dotted key in a (validated, defaults-filled) configuration."""
    value: Any = config
    for part in key.split("."):
        value = value[part]
    return value


def render(options: Iterable[ConfigOption], config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> str:
    """The command-line options of a configuration: each option's key looked up in `config` (or `overrides`, keyed
    by schema key), shell-quoted."""
    words: list[str] = []
    for option in options:
        value = overrides[option.key] if overrides and option.key in overrides else config_value(config, option.key)
        words += option.render(value)
    return shlex.join(words)


# ----------------------------------------------------------------------------------------------------------------
# Option blocks several stages share
# ----------------------------------------------------------------------------------------------------------------
S3_OPTIONS = [
    ConfigOption("--bucket", "bucket", "S3 bucket"),
    ConfigOption("--gallery-prefix", "gallery_prefix", "key prefix of the dataset"),
    ConfigOption("--endpoint-url", "endpoint_url", "S3 endpoint URL (null: AWS)"),
    ConfigOption("--anonymous", "download.anonymous", "unsigned requests (the Gallery is public); "
                                                      "--no-anonymous uses your AWS credentials"),
]
SKIP_BAD_FIELDS = ConfigOption("--skip-bad-fields", "qc.skip_bad_fields",
                               "leave fields that cannot be decoded out and record them (else fail naming them)")
METADATA_DIR = ConfigOption("--metadata-dir", "metadata_dir", "plate metadata folder (experiment-metadata.tsv, "
                                                              "platemaps); a relative path absent here is the bundled one")


def add_s3_options(group: argparse._ActionsContainer) -> None:
    """Where the Cell Painting Gallery is: the same options for every command that reads it."""
    add_config_options(group, S3_OPTIONS)
    # 0.2's spelling of --no-anonymous, kept working for old command lines but not shown.
    group.add_argument("--signed", dest="anonymous", action="store_false", help=argparse.SUPPRESS)


def add_load_data(parser: argparse._ActionsContainer) -> None:
    parser.add_argument("--load-data", required=True, help="the plate's LoadData CSV")


def add_illum(parser: argparse._ActionsContainer) -> None:
    """The plate's illumination functions, as files (<plate>_Illum<Channel>.npy)."""
    parser.add_argument("--illum", nargs="+", default=None, metavar="NPY",
                        help="the plate's illumination functions <plate>_Illum<Channel>.npy, one per channel")
    # 0.2's form (a folder holding them), kept working for old command lines but not shown.
    parser.add_argument("--illum-dir", default=None, help=argparse.SUPPRESS)


def illum_folder(args: argparse.Namespace, plate: str, channels: Iterable[str]) -> Path:
    """The folder of the illumination functions given with --illum (one file per channel, named as the Gallery
    names them, all in one folder: the stages read them there), or --illum-dir."""
    from paintbench.paths import illum_filename

    if args.illum is None and args.illum_dir is None:
        raise ValueError("--illum: the plate's illumination functions are required")
    if args.illum is None:
        return Path(args.illum_dir)
    given = {Path(path).name: Path(path) for path in args.illum}
    missing = [illum_filename(plate, c) for c in channels if illum_filename(plate, c) not in given]
    if missing:
        raise ValueError(f"--illum: plate {plate} lacks {', '.join(missing)} (given: {', '.join(sorted(given))})")
    folders = {given[illum_filename(plate, c)].parent for c in channels}  # other plates' files may be given too
    if len(folders) != 1:
        raise ValueError(f"--illum: a plate's illumination functions must share one folder, got {sorted(map(str, folders))}")
    return folders.pop()


def add_qc_output(parser: argparse._ActionsContainer, what: str = "TSV of the fields left out",
                  required: bool = False) -> None:
    parser.add_argument("--qc-output", required=required, default=None, help=what)


def resolved_metadata_dir(args: argparse.Namespace) -> str:
    """--metadata-dir by the one path rule (paintbench.config.resolve_input_path)."""
    from paintbench.config import resolve_input_path

    return str(resolve_input_path(args.metadata_dir))


# vit.num_workers: the rules pass their job's threads instead (at least 1), so it is not rendered from the config.
NUM_WORKERS = ConfigOption("--num-workers", "vit.num_workers", "DataLoader worker processes (CPU threads on CPU)")


def set_cpu_threads(threads: int, num_workers: int) -> None:
    """On CPU, leave the worker processes their cores instead of oversubscribing."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, threads - num_workers))
