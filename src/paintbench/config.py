"""Run configuration: schema validation with defaults, and the checks a schema cannot express.

Both run before any job starts (the Snakefile calls `check_config`), and every message names the
config key and what is allowed, e.g. "config key 'channels': 'DNA' is a required property".
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from paintbench.feature_sets import check_chains, check_finetune
from paintbench.metadata import MetadataError, known_plates, paper_plates, plate_info, unknown_name_message
from paintbench.registry import CHANNELS, FEATURE_SETS, PUBLISHED, VIT_METHODS, VIT_TRAINING_KEYS
from paintbench.schema import BUNDLED_METADATA, ConfigError, load_schema

DEPRECATED_MAE_KEYS = ("mask_ratio", "decoder_dim", "decoder_depth", "decoder_heads", "norm_pix_loss", "checkpoint")
log = logging.getLogger(__name__)

# The checkout holding the Snakefile; an installed wheel has none, and its bundled metadata stands in for
# config/metadata (the one bundled input a command needs without the workflow).
WORKFLOW_DIR = Path(__file__).resolve().parents[2]
BUNDLED_INPUTS = {Path("config/metadata"): BUNDLED_METADATA}


def _with_defaults(validator_class: type) -> type:
    """A validator that also fills in `default`s (the same convention as snakemake.utils.validate)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "oneOf":
        allowed = [s.get("enum", s.get("type")) for s in schema.get("oneOf", [])]
        return f"{error.instance!r} is not valid; {schema.get('description', '')} (allowed: {allowed})".strip()
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        return f"{error.message} (allowed keys: {', '.join(allowed)})"
    if error.validator == "pattern":
        return f"{error.instance!r} does not match {error.validator_value}"
    return error.message


def _most_specific(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For 'all or a list' keys, report the bad list item rather than 'matches no alternative'."""
    if error.validator == "oneOf" and isinstance(error.instance, list):
        deeper = [e for e in error.context if len(e.relative_path) > 0]  # errors inside the list
        if deeper:
            return _most_specific(jsonschema.exceptions.best_match(deeper))
    return error


def validate_schema(config: dict[str, Any]) -> dict[str, Any]:
    """Validate against the JSON schema, filling defaults in place; raise ConfigError listing every problem."""
    validator = _with_defaults(jsonschema.Draft202012Validator)(load_schema())
    errors = sorted((_most_specific(e) for e in validator.iter_errors(config)), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"config key '{_key(e)}': {_describe(e)}" for e in errors]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return config


PATH_RULE = (
    "A relative path is taken relative to the working directory (where snakemake runs, or its --directory). "
    "For the input paths metadata_dir, cellprofiler.pipeline, cellprofiler.executable and vit.<method>.checkpoint, "
    "a relative path that does not exist there is taken from the workflow folder (the one holding the Snakefile) "
    "instead: that is how the bundled defaults (config/metadata, config/cellprofiler/*.cppipe, "
    ".venvs/cellprofiler/bin/cellprofiler) work from any directory. Absolute paths are used as given."
)


def resolve_input_path(path: str | Path, workdir: Path | None = None, workflow_dir: Path = WORKFLOW_DIR) -> Path:
    """The one rule for relative input paths (PATH_RULE): the working directory's copy wins, else the workflow
    folder's. `workdir` defaults to the current directory, which is snakemake's --directory while it runs."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    in_workdir = (workdir if workdir is not None else Path.cwd()) / candidate
    if in_workdir.exists():
        return in_workdir
    in_workflow = workflow_dir / candidate
    bundled = BUNDLED_INPUTS.get(candidate)
    return bundled if bundled is not None and not in_workflow.exists() else in_workflow


def resolve_command(command: str, workdir: Path | None = None, workflow_dir: Path = WORKFLOW_DIR) -> str:
    """A bare command name (no '/') is looked up on PATH at run time; a path follows resolve_input_path."""
    return str(resolve_input_path(command, workdir, workflow_dir)) if Path(command).name != command else command


def check_semantics(config: dict[str, Any]) -> None:
    """Checks across keys and against the bundled metadata."""
    numbers = {name: number for name, number in config["channels"].items() if number is not None}  # null: unused
    duplicated = {n for n in numbers.values() if list(numbers.values()).count(n) > 1}
    if duplicated:
        clash = {name: n for name, n in numbers.items() if n in duplicated}
        raise ConfigError(f"config key 'channels': one file channel mapped to several names: {clash}")
    missing = [c for c in CHANNELS if c not in numbers]
    if missing:
        raise ConfigError(f"config key 'channels': missing {missing} (required: {list(CHANNELS)})")
    check_image_pattern(config)

    metadata_dir = resolve_input_path(config["metadata_dir"])
    if not (metadata_dir / "experiment-metadata.tsv").exists():
        raise ConfigError(f"config key 'metadata_dir': {metadata_dir} has no experiment-metadata.tsv (a relative "
                          "metadata_dir is looked up in the working directory, then in the workflow folder)")
    known = known_plates(metadata_dir)
    if config["plates"] == "all":
        config["plates"] = list(known)
    elif config["plates"] == "paper":
        config["plates"] = paper_plates(metadata_dir)
        if not config["plates"]:
            raise ConfigError(f"config key 'plates': 'paper' selects no plate of {metadata_dir / 'experiment-metadata.tsv'}")
    for plate in config["plates"]:
        if plate not in known:
            raise ConfigError("config key 'plates': " + unknown_name_message("plate", plate, known))
        try:
            plate_info(plate, metadata_dir)
        except MetadataError as err:
            raise ConfigError(f"config key 'plates': plate {plate}: {err}") from err
    if config["cellprofiler"]["skip_bad_fields"] is not None:
        log.warning("config key 'cellprofiler.skip_bad_fields' is deprecated: use qc.skip_bad_fields")
        config["qc"]["skip_bad_fields"] = config["cellprofiler"]["skip_bad_fields"]
    vit = config["vit"]
    for key in DEPRECATED_MAE_KEYS:
        if vit[key] is not None:
            log.warning("config key 'vit.%s' is deprecated: use vit.mae.%s", key, key)
            vit["mae"][key] = vit[key]
    mae = vit["mae"]
    if mae["decoder_dim"] % mae["decoder_heads"]:
        raise ConfigError(f"config key 'vit.mae.decoder_dim': {mae['decoder_dim']} is not divisible by "
                          f"vit.mae.decoder_heads ({mae['decoder_heads']})")
    for method in VIT_METHODS:
        batch = vit[method]["batch_size"] or vit["batch_size"]
        if batch % vit["gpus"]:
            raise ConfigError(f"config key 'vit.{method}.batch_size': the global batch {batch} does not split over "
                              f"vit.gpus = {vit['gpus']} processes")
    if vit["input_size"] % vit["patch_size"]:
        raise ConfigError(f"config key 'vit.input_size': {vit['input_size']} is not a multiple of vit.patch_size ({vit['patch_size']})")
    if config["published_profiles"] and PUBLISHED not in config["feature_sets"]:
        config["feature_sets"] = [*config["feature_sets"], PUBLISHED]
    if PUBLISHED in config["feature_sets"] and config["source"] != "s3":
        raise ConfigError("config key 'feature_sets': published_cellprofiler needs source: s3 (the profiles come from "
                          f"the Gallery; source is {config['source']!r})")
    if config["illum"]["source"] == "gallery" and config["source"] != "s3":
        raise ConfigError("config key 'illum.source': 'gallery' needs source: s3 (allowed here: computed)")
    shared_folder = "{plate}" not in config["local"]["image_dir"] and "(?P<plate>" not in config["image_pattern"]
    if config["source"] == "local" and shared_folder and len(config["plates"]) > 1:
        raise ConfigError("config key 'local.image_dir': must contain '{plate}' when several plates are configured "
                          "(or image_pattern a (?P<plate>...) group, when one folder holds every plate)")
    check_encoders(config)
    check_finetune(config)
    check_chains(config)


def check_encoders(config: dict[str, Any]) -> None:
    """Names, formats, sizes and files of encoders.<name> and precomputed.<name>, before any job."""
    from paintbench.encoder_formats import RANDOM, resolve

    names = [*config["encoders"], *config["precomputed"]]
    for name in names:
        section = "encoders" if name in config["encoders"] else "precomputed"
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in FEATURE_SETS or names.count(name) > 1:
            raise ConfigError(f"config key '{section}.{name}': a feature set's name is lower-case letters, digits and "
                              f"_, unique, and none of {', '.join(FEATURE_SETS)}")
    for name, entry in config["encoders"].items():
        try:
            spec = resolve(name, {k: v for k, v in entry.items() if k != "chains"})
        except ValueError as error:
            raise ConfigError(str(error)) from error
        if spec.checkpoint != RANDOM and not resolve_input_path(spec.checkpoint).is_file():
            raise ConfigError(f"config key 'encoders.{name}.checkpoint': no file {spec.checkpoint}")
    for name, entry in config["precomputed"].items():
        paths = [entry["path"].format(plate=plate) for plate in config["plates"]] if "{plate}" in entry["path"] \
            else [entry["path"]]
        absent = [p for p in paths if not resolve_input_path(p).is_file()]
        if absent:
            raise ConfigError(f"config key 'precomputed.{name}.path': no file {', '.join(absent[:3])}"
                              f"{' ...' if len(absent) > 3 else ''}")


def check_image_pattern(config: dict[str, Any]) -> None:
    """The image pattern compiles and has the groups a field needs; the synthetic source writes Phenix names only."""
    from paintbench.image_pattern import DEFAULT_IMAGE_PATTERN, pattern_problem

    pattern = config["image_pattern"]
    problem = pattern_problem(pattern)
    if problem:
        raise ConfigError(f"config key 'image_pattern': {problem}")
    if config["source"] == "synthetic" and pattern != DEFAULT_IMAGE_PATTERN:
        raise ConfigError("config key 'image_pattern': source: synthetic writes Phenix file names; leave image_pattern "
                          f"at its default {DEFAULT_IMAGE_PATTERN!r}")


def vit_method(config: dict[str, Any], method: str) -> dict[str, Any]:
    """One method's effective training keys (vit.<method> overrides of vit.*), its own settings, and its encoder
    checkpoint (None = pretrain)."""
    vit, section = config["vit"], config["vit"][method]
    training = {key: vit[key] if section[key] is None else section[key] for key in VIT_TRAINING_KEYS}
    settings = {k: v for k, v in section.items() if k not in (*VIT_TRAINING_KEYS, "checkpoint")}
    return {**training, "settings": settings, "checkpoint": section["checkpoint"]}


def _number(text: str) -> int | float | None:
    """The int, else the float, that `text` spells (as Snakemake reads --config numbers); None for neither."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return None


def _scalar(value: str, types: set[str]) -> Any:
    """A `--config` string as the scalar type the schema wants, when it reads as one."""
    text = value.strip()
    if "null" in types and text in ("null", "None", "~"):
        return None
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    number = _number(text)
    if "integer" in types and isinstance(number, int):
        return number
    if "number" in types and number is not None:
        return float(number)
    return value


def _types(schema: dict[str, Any]) -> set[str]:
    kinds = schema.get("type", [])
    found = {kinds} if isinstance(kinds, str) else set(kinds)
    for branch in schema.get("oneOf", []):
        found |= _types(branch)
    return found


def coerce_to_schema(value: Any, schema: dict[str, Any]) -> Any:
    """Undo the all-strings typing of `--config key=value` (sites=[1,2], genes=null, retrieval={null_size: 9})
    by following the schema's types; anything that does not convert is left for validation to report."""
    if isinstance(value, str):
        return _scalar(value, _types(schema))
    if isinstance(value, list):
        items = next((b["items"] for b in [schema, *schema.get("oneOf", [])] if "items" in b), {})
        return [coerce_to_schema(item, items) for item in value]
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: coerce_to_schema(v, properties.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    return value


def check_config(config: dict[str, Any], preflight: bool = True) -> dict[str, Any]:
    """Schema (with defaults), semantic checks, then the pre-flight of the plates and images
    (paintbench.preflight: its errors raise, naming every problem; its warnings are logged). Returns the same dict,
    completed."""
    config.update(coerce_to_schema(config, load_schema()))
    validate_schema(config)
    check_semantics(config)
    if preflight:
        from paintbench.preflight import preflight as run_preflight

        findings = run_preflight(config, resolve_input_path(config["metadata_dir"]))
        for finding in findings:
            if finding.level == "warning":
                log.warning("%s", finding.message)
        errors = [finding.message for finding in findings if finding.level == "error"]
        if errors:
            raise ConfigError("\n  ".join(["the run cannot succeed:", *errors]))
    return config


def parse_config_value(text: str) -> Any:
    """One `--config key=value` value typed as Snakemake types it (int, float, True/False, YAML with strings kept as
    strings, else the text); check_config then converts what the schema wants (coerce_to_schema). Not
    snakemake.cli.parse_config: importing snakemake.cli loads the executor plugins (seconds, for one CLI call)."""
    if text == "":
        return None
    number = _number(text)
    if number is not None:
        return number
    if text in ("True", "False"):
        return text == "True"
    try:
        return yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError:
        return text


def parse_config_overrides(entries: list[str]) -> dict[str, Any]:
    """`--config` entries (KEY=VALUE) as a dict."""
    overrides: dict[str, Any] = {}
    for entry in entries:
        key, equals, value = entry.partition("=")
        if not equals or not key:
            raise ConfigError(f"--config entry {entry!r}: expected KEY=VALUE, e.g. plates=paper")
        overrides[key] = parse_config_value(value)
    return overrides


def load_config(paths: str | Path | list[str | Path], overrides: dict[str, Any] | None = None,
                preflight: bool = True) -> dict[str, Any]:
    """Read YAML config files, each layered over the one before, then the overrides section by section (as Snakemake
    layers several --configfile and --config); validate (preflight: also the plates and images)."""
    from snakemake.utils import update_config

    config: dict[str, Any] = {}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    update_config(config, overrides or {})
    return check_config(config, preflight)
