"""One registry of names, one home of defaults: the schema's enums are the registry's tuples, every option of the
command line that a configuration key backs defaults to the schema's value, and the workflow renders the same
options from a configuration."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest
import yaml

from paintbench import registry, schema
from paintbench.cli import build_parser
from paintbench.cli.options import render
from tests.helpers import REPO

RAW_SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())  # read independently

# (schema key, registry tuple): the schema's enum of each must be the registry's names.
ENUMS = [("source", registry.SOURCES), ("illum.source", registry.ILLUM_SOURCES),
         ("retrieval.protocol", registry.PROTOCOLS),
         ("retrieval.compound_gene_negatives", registry.COMPOUND_GENE_NEGATIVES), ("vit.pooling", registry.POOLINGS),
         ("vit.crop", registry.CROP_MODES), ("vit.precision", registry.PRECISIONS),
         ("feature_sets", registry.FEATURE_SETS)]

# Options named like a schema key but backed by none, each with the reason.
NOT_CONFIG = {
    ("vit-embed", "model"): "unset means: take the architecture stored in the encoder file",
    ("report-figures", "metadata_dir"): "unset means 384-well plate maps for a hand-made report",
    ("download", "wells"): "the rule passes the plate's selected wells",
    ("download", "sites"): "the rule passes the plate's fields",
    ("download", "channels"): "the channel map, as NAME=NUMBER",
    ("download", "image_dir"): "the rule passes the plate's folder (local.image_dir with {plate} filled in)",
    ("ground-truth", "gene_classes"): "synthetic.gene_classes as GENE=CLASS words",
    ("plan", "cells_per_field"): "the density assumed for a real run, not the synthetic generator's",
    **{(command, "wells"): "a shard's or plate's wells, or files of well profiles"
       for command in ("plate-qc", "cellprofiler", "profiles", "precomputed-profiles")},
    ("query", "results_dir"): "the finished run a user looks up",
    ("encoder-embed", "encoders"): "the entries of config key encoders as JSON, not vit.finetune.encoders' names",
    ("profile-chain", "steps"): "one chain's steps (a list of profiles.chains), not the ViT's training steps",
    ("report-summary", "published"): "the paper's values table, not profiles.feature_sets.published",
    ("report-html", "cellprofiler"): "the CellProfiler executable whose version the report shows, not a chain list",
    **{(command, "plates"): "the rules pass the run's plates, expanded"
       for command in ("published-profiles", "report-figures", "report-html", "finetune-split")},
    **{("vit-pretrain", flag): "overrides --settings (vit.mae); unset: as --settings says"
       for flag in ("mask_ratio", "decoder_dim", "decoder_depth", "decoder_heads", "norm_pix_loss")},
}


def raw_node(key: str) -> dict:
    node = RAW_SCHEMA
    for part in key.split("."):
        node = node["properties"][part]
    return node


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("key, names", ENUMS, ids=[k for k, _ in ENUMS])
def test_schema_enums_are_the_registry(key, names):
    node = raw_node(key)
    assert tuple(node.get("items", node)["enum"]) == tuple(names)


def test_feature_sets_and_methods_agree():
    assert set(registry.FEATURE_SET_METHODS.values()) == set(registry.VIT_METHODS)
    assert registry.IMAGE_FEATURE_SETS == ("cellprofiler", *registry.VIT_FEATURE_SETS)
    assert set(RAW_SCHEMA["properties"]["vit"]["properties"]) >= set(registry.VIT_METHODS)
    assert tuple(RAW_SCHEMA["properties"]["channels"]["required"]) == registry.CHANNELS
    assert set(registry.TASKS) == set(registry.TASK_TITLES)
    gene_classes = raw_node("synthetic.gene_classes")["additionalProperties"]["enum"]
    assert tuple(gene_classes) == registry.GENE_CLASSES


def config_options() -> list[tuple[str, argparse.Action, str | None]]:
    """(command, action, the config key its help names or None) for every visible option of every command."""
    found = []
    for name, parser in subcommands().items():
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                named = re.search(r"config key ([a-z_.]+[a-z_])", action.help or "")
                found.append((name, action, named.group(1) if named else None))
    return found


def test_every_config_backed_option_defaults_to_the_schema():
    """An option whose help names its config key has the schema's default; checked against the schema file read
    here, not through paintbench.schema."""
    checked = 0
    for command, action, key in config_options():
        if key is None or (command, action.dest) in NOT_CONFIG:
            continue
        assert key in schema.leaf_keys(), f"paintbench {command} {action.option_strings[0]}: no config key {key}"
        expected = raw_node(key)["default"]
        assert action.default == expected, f"paintbench {command} {action.option_strings[0]}: default " \
                                           f"{action.default!r}, schema {key} {expected!r}"
        node = raw_node(key)
        if "enum" in node:
            assert tuple(action.choices) == tuple(node["enum"]), (command, action.option_strings[0])
        checked += 1
    assert checked >= 60  # the options of every stage, not a handful


def test_options_named_like_a_schema_key_are_backed_by_it():
    """An option whose name is a schema key's last part (--null-size, --pooling, --smoothing-fraction, ...) either
    says which key backs it, or is listed above with the reason it is not: so no option repeats a default of its
    own (0.2 had --pooling cls against the schema's mean, --smoothing-fraction 500/1080 against 0.46296)."""
    leaves = {}
    for key, node in schema.leaf_keys().items():
        if node.get("type") != "object":  # settings, not sections such as illum or qc
            leaves.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    unbacked = []
    for command, action, key in config_options():
        if action.dest in leaves and key is None and (command, action.dest) not in NOT_CONFIG:
            unbacked.append(f"paintbench {command} {action.option_strings[0]} (schema: {', '.join(leaves[action.dest])})")
    assert unbacked == []


def test_the_three_defaults_that_disagreed():
    from paintbench.illum import SMOOTHING_FRACTION
    from paintbench.vit.embed import embed_plate
    from paintbench.vit.model import DECODER_DEFAULTS, MaskedAutoencoder, masked_patch_loss

    import inspect

    assert inspect.signature(embed_plate).parameters["pooling"].default == raw_node("vit.pooling")["default"] == "mean"
    assert inspect.signature(MaskedAutoencoder).parameters["norm_pix_loss"].default is False
    assert inspect.signature(masked_patch_loss).parameters["norm_pix"].default is False
    assert DECODER_DEFAULTS["norm_pix_loss"] is raw_node("vit.mae.norm_pix_loss")["default"] is False
    assert SMOOTHING_FRACTION == raw_node("illum.smoothing_fraction")["default"] == 500 / 1080
    parsed = build_parser().parse_args(["illum", "--load-data", "x.csv", "--output-dir", "o"])
    assert parsed.smoothing_fraction == 500 / 1080


def test_rendered_options_parse_back_to_the_configuration():
    """render(options, config) is what the rules pass: parsed by the command, it gives the configuration's values
    (null, lists and JSON objects included)."""
    from paintbench.cli.vit import CROP_OPTIONS, PRETRAIN_OPTIONS
    from paintbench.config import load_config

    config = load_config(REPO / "config" / "demo.yaml")
    config["vit"]["max_crops_per_field"] = None
    config["vit"]["model_kwargs"] = {"depth": 2, "embed_dim": 96}
    words = shlex.split(render(PRETRAIN_OPTIONS, config))
    args = build_parser().parse_args(["vit-pretrain", "--crops", "c", "--out-dir", "o", *words])
    assert args.model_kwargs == {"depth": 2, "embed_dim": 96} and args.views == config["vit"]["views"]
    assert (args.steps, args.lr, args.pooling) == (config["vit"]["steps"], config["vit"]["lr"], config["vit"]["pooling"])
    words = shlex.split(render(CROP_OPTIONS, config))
    args = build_parser().parse_args(["vit-crops", "--load-data", "x", "--output-prefix", "p", *words])
    assert args.max_crops_per_field is None and args.sample_per_field == config["vit"]["pretrain_crops_per_field"]
    assert args.skip_bad_fields is config["qc"]["skip_bad_fields"]
