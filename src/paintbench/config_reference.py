"""The configuration reference (docs/config.md), generated from the schema so it cannot drift from it.

`paintbench check-config --reference` prints it; tests/test_config_reference.py fails when docs/config.md differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

REFERENCE_COMMAND = "paintbench check-config --reference > docs/config.md"


@dataclass(frozen=True)
class SchemaKey:
    """One configuration key: its dotted name, its schema and whether its section requires it."""

    name: str
    schema: dict[str, Any]
    required: bool


def schema_keys(schema: dict[str, Any], prefix: str = "") -> Iterator[SchemaKey]:
    """Every key of the schema, sections before their keys, in schema order."""
    required = set(schema.get("required", []))
    for name, subschema in schema.get("properties", {}).items():
        yield SchemaKey(f"{prefix}{name}", subschema, name in required)
        yield from schema_keys(subschema, f"{prefix}{name}.")
    entry = schema.get("additionalProperties")
    if isinstance(entry, dict) and entry.get("properties"):  # a map of named entries: encoders.<name>.format
        yield from schema_keys(entry, f"{prefix}<name>.")


def type_text(schema: dict[str, Any]) -> str:
    """A key's type in words: 'integer or null', 'one of: s3, local, synthetic', 'list of string'."""
    if "oneOf" in schema:
        return " or ".join(type_text(branch) for branch in schema["oneOf"])
    if "enum" in schema:
        return " or ".join(f"`{value}`" for value in schema["enum"])
    kinds = schema.get("type", "any")
    names = [kinds] if isinstance(kinds, str) else list(kinds)
    if "array" in names and "items" in schema:
        names = [f"list of {type_text(schema['items'])}" if n == "array" else n for n in names]
    if "object" in names and isinstance(schema.get("additionalProperties"), dict):
        names = [f"map of {type_text(schema['additionalProperties'])}" if n == "object" else n for n in names]
    return " or ".join(names)


def default_text(key: SchemaKey) -> str:
    if "default" not in key.schema:
        return "required" if key.required else "(none)"
    value = key.schema["default"]
    return value if isinstance(value, str) else json.dumps(value)


def _cell(text: str) -> str:
    """Table-safe: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def reference_markdown(schema: dict[str, Any]) -> str:
    """docs/config.md: the schema's description, then one table row per key (dotted name, type, default,
    description)."""
    lines = [
        "# Configuration reference",
        "",
        f"Generated from workflow/schemas/config.schema.yaml by `{REFERENCE_COMMAND}`; do not edit by hand.",
        "`paintbench check-config --configfile FILE` prints a file's effective configuration (every default filled in).",
        "",
        _cell(schema.get("description", "")),
        "",
        "| key | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for key in schema_keys(schema):
        default = default_text(key)
        shown = f"`{_cell(default)}`" if "default" in key.schema else default
        lines.append(f"| `{key.name}` | {_cell(type_text(key.schema))} | {shown} | "
                     f"{_cell(key.schema.get('description', ''))} |")
    return "\n".join(lines) + "\n"
