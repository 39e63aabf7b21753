"""The run's feature sets and their profile chains, as the configuration makes them: configured feature sets,
external encoders, fine-tuned ones (<parent>_ft) and precomputed tables, each with the chains it runs; and the
configuration checks of vit.finetune and profiles.chains, run by paintbench.config before any job.
"""

from __future__ import annotations

import re
from typing import Any

from paintbench.registry import (CELLPROFILER, CHAIN_KINDS, EMBEDDING_KIND, FINETUNED_SUFFIX, HELDOUT_CHAIN,
                                 METHOD_FEATURE_SETS, PUBLISHED)
from paintbench.schema import ConfigError


# Steps that refit the per-plate normalization: published profiles were normalized by the consortium already.
CONTROL_FITTED = {"mad", "standardize", "sphering", "wellpos", "cc", "harmony"}


def profile_chains(config: dict[str, Any]) -> dict[str, list[str]]:
    """The built-in chains (the schema's default of profiles.chains) with the configuration's added or replaced."""
    from paintbench.schema import default

    return {**default("profiles.chains"), **config["profiles"]["chains"]}


def run_feature_sets(config: dict[str, Any]) -> list[str]:
    """Every feature set of the run: config key feature_sets, each external encoder, each fine-tuned method or
    encoder (<parent>_ft), then each precomputed table."""
    return [*config["feature_sets"], *config["encoders"], *finetuned_sets(config), *config["precomputed"]]


def finetuned_sets(config: dict[str, Any]) -> dict[str, str]:
    """vit.finetune.methods and .encoders: fine-tuned feature set -> its pretrained parent feature set."""
    finetune = config["vit"]["finetune"]
    parents = [*(METHOD_FEATURE_SETS[m] for m in finetune["methods"]), *finetune["encoders"]]
    return {f"{parent}{FINETUNED_SUFFIX}": parent for parent in parents}


def feature_set_chains(config: dict[str, Any]) -> dict[str, list[str]]:
    """The chains each of the run's feature sets runs, headline first (profiles.feature_sets; an encoder or
    precomputed entry's own `chains`, else the kind of every embedding: vit)."""
    kinds = config["profiles"]["feature_sets"]
    entries = {**config["encoders"], **config["precomputed"]}
    tuned = finetuned_sets(config)
    chains = {}
    for fs in run_feature_sets(config):
        own = (entries.get(fs) or {}).get("chains")
        chains[fs] = list(dict.fromkeys(own or kinds[CHAIN_KINDS.get(fs, EMBEDDING_KIND)]))
    for fs, parent in tuned.items():  # both scored on the held-out perturbations, side by side
        chains[fs] = [HELDOUT_CHAIN]
        chains[parent] = [*chains[parent], HELDOUT_CHAIN]
    return chains


def check_finetune(config: dict[str, Any]) -> None:
    """Only a method the run pretrains or loads (its feature set in feature_sets), or an external encoder of the
    run whose format paintbench builds, can be fine-tuned; its <name>_ft is no other feature set's name."""
    from paintbench.encoder_formats import FINETUNABLE

    finetune = config["vit"]["finetune"]
    for method in finetune["methods"]:
        if METHOD_FEATURE_SETS[method] not in config["feature_sets"]:
            raise ConfigError(f"config key 'vit.finetune.methods': {method} is fine-tuned from feature set "
                              f"{METHOD_FEATURE_SETS[method]}, which config key 'feature_sets' does not list")
    for name in finetune["encoders"]:
        entry = config["encoders"].get(name)
        if entry is None:
            raise ConfigError(f"config key 'vit.finetune.encoders': {name!r} is not an encoder of config key "
                              f"'encoders' ({', '.join(config['encoders']) or 'none configured'})")
        if entry.get("format") not in FINETUNABLE:
            raise ConfigError(f"config key 'vit.finetune.encoders': {name} is a {entry.get('format')} model, whose "
                              f"architecture paintbench does not build; fine-tuning takes {', '.join(FINETUNABLE)}")
    names = [*config["encoders"], *config["precomputed"], *config["feature_sets"]]
    for tuned in finetuned_sets(config):
        if tuned in names:
            raise ConfigError(f"config key 'vit.finetune': the fine-tuned feature set {tuned} has the name of a "
                              "configured feature set; rename that one")


def check_chains(config: dict[str, Any]) -> None:
    """Chains name known steps, feature sets name known chains, and each step has what it needs; before any job."""
    if config["profiles"]["spherize"]:
        raise ConfigError("config key 'profiles.spherize' is replaced by profile chains: name a chain with the "
                          "sphering step in profiles.feature_sets (e.g. cellprofiler: [mad_featselect, mad_sphering])")
    chains = profile_chains(config)
    reserved = {"annotated", *config["plates"]}  # file names beside the chains' in profiles/<feature set>/
    for name in chains:
        if name in reserved or not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ConfigError(f"config key 'profiles.chains.{name}': a chain's name is letters, digits and _, and "
                              "neither 'annotated' nor a plate barcode")
    for kind, names in config["profiles"]["feature_sets"].items():
        for name in names:
            if name not in chains:
                raise ConfigError(f"config key 'profiles.feature_sets.{kind}': unknown chain {name!r} "
                                  f"(known: {', '.join(chains)})")
    for section in ("encoders", "precomputed"):
        for fs, entry in config[section].items():
            unknown = [name for name in entry.get("chains") or [] if name not in chains]
            if unknown:
                raise ConfigError(f"config key '{section}.{fs}.chains': unknown chain(s) {unknown} "
                                  f"(known: {', '.join(chains)})")
    for fs, names in feature_set_chains(config).items():
        for name in names:
            if fs == PUBLISHED and set(chains[name]) & CONTROL_FITTED:
                raise ConfigError(f"config key 'profiles.feature_sets.published': chain {name!r} "
                                  f"({', '.join(chains[name])}) refits what the consortium's published profiles "
                                  "already had (normalized, feature-selected); use none")
            if "cc" in chains[name] and fs != CELLPROFILER:
                raise ConfigError(f"config key 'profiles.chains.{name}': step cc needs the cell count "
                                  f"(Metadata_Object_Count), which feature set {fs} does not have; only cellprofiler does")
