"""The configuration schema as data: the one home of every setting's default, type and allowed values.

workflow/schemas/config.schema.yaml is Snakemake's schema of the run configuration; the package carries the same
file (paintbench/resources/, a link to it in a checkout), so an installed wheel knows its defaults too. The command
line (paintbench.cli) and the workflow's input functions read defaults from here instead of restating them.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """Invalid configuration; the message names the key."""


RESOURCES = Path(str(resources.files("paintbench"))) / "resources"
SCHEMA_PATH = RESOURCES / "config.schema.yaml"
# config/metadata in a checkout (resolved through the link, so messages name the real folder): CPJUMP1's plates,
# platemaps and libraries, and the paper's values.
BUNDLED_METADATA = (RESOURCES / "metadata").resolve()


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def load_schema() -> dict[str, Any]:
    """A fresh copy of the schema (callers may fill or change it)."""
    return copy.deepcopy(_schema())


def key_schema(key: str) -> dict[str, Any]:
    """The schema of a dotted configuration key, e.g. 'vit.dino.koleo_weight'; KeyError names the key."""
    node = _schema()
    for part in key.split("."):
        properties = node.get("properties", {})
        if part not in properties:
            raise KeyError(f"config key {key!r}: not in the schema ({SCHEMA_PATH.name})")
        node = properties[part]
    return node


def default(key: str) -> Any:
    """The schema's default of a dotted key (a copy: mutable defaults stay the schema's own)."""
    node = key_schema(key)
    if "default" not in node:
        raise KeyError(f"config key {key!r}: the schema gives it no default")
    return copy.deepcopy(node["default"])


def choices(key: str) -> tuple[Any, ...]:
    """The enum of a dotted key (of a list key: of its items)."""
    node = key_schema(key)
    node = node.get("items", node) if "enum" not in node else node
    if "enum" not in node:
        raise KeyError(f"config key {key!r}: the schema lists no allowed values")
    return tuple(node["enum"])


def description(key: str) -> str:
    return " ".join(str(key_schema(key).get("description", "")).split())


def leaf_keys(node: dict[str, Any] | None = None, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every key of the schema (dotted) -> its schema, nested sections included."""
    node = _schema() if node is None else node
    keys: dict[str, dict[str, Any]] = {}
    for name, child in node.get("properties", {}).items():
        dotted = f"{prefix}{name}"
        keys[dotted] = child
        keys.update(leaf_keys(child, f"{dotted}."))
    return keys
