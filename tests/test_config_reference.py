"""Every configuration key is described (schema), listed in docs/config.md, and shown by `paintbench check-config`."""

from __future__ import annotations

import subprocess
import sys

import yaml

from paintbench.config import load_schema
from paintbench.config_reference import REFERENCE_COMMAND, reference_markdown, schema_keys
from tests.helpers import REPO


def test_every_key_has_a_description_and_a_default():
    """Sections included; a key its section requires (plates; the five channels of a given channel map) has no
    default, and its description says it is required."""
    problems = []
    for key in schema_keys(load_schema()):
        description = key.schema.get("description", "")
        if not description.strip():
            problems.append(f"{key.name}: no description")
        if key.required and "required" not in description.lower():
            problems.append(f"{key.name}: required, but its description does not say so")
        if not key.required and "default" not in key.schema:
            problems.append(f"{key.name}: no default")
    assert problems == [], "\n".join(problems)


def test_the_walk_reaches_nested_sections():
    names = {key.name for key in schema_keys(load_schema())}
    assert {"plates", "local.image_dir", "vit.views.flip", "vit.dino.koleo_weight", "vit.simclr.checkpoint",
            "qc.skip_bad_fields", "download.anonymous", "target_id.draws"} <= names


def test_docs_config_md_is_the_generated_reference():
    generated = reference_markdown(load_schema())
    written = (REPO / "docs" / "config.md").read_text()
    assert written == generated, f"docs/config.md is out of date with the schema: regenerate it with `{REFERENCE_COMMAND}`"


def check_config(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paintbench", "check-config", *args], capture_output=True, text=True,
                          cwd=REPO)


def test_check_config_prints_every_default_and_expands_plates():
    done = check_config("--configfile", "config/demo.yaml", "--config", "plates=paper", "vit={simclr: {steps: 12}}")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert config["vit"]["dino"]["koleo_weight"] == 1.0  # set in demo.yaml
    assert config["vit"]["simclr"]["steps"] == 12  # the override, typed as an integer
    assert config["vit"]["simclr"]["temperature"] == 0.2 and config["vit"]["steps"] == 600  # default; demo.yaml kept
    assert config["download"]["max_attempts"] == 6 and config["retrieval"]["null_size"] == 100_000
    assert len(config["plates"]) == 40


def test_check_config_fills_defaults_of_the_default_file():
    done = check_config()  # --configfile config/config.yaml
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert config["vit"]["dino"]["koleo_weight"] == 0.1 and len(config["plates"]) == 10


def test_check_config_names_the_invalid_key():
    done = check_config("--configfile", "config/demo.yaml", "--config", "vit={dino: {koleo_weight: -1}}")
    assert done.returncode == 1 and done.stdout == ""
    assert "config key 'vit.dino.koleo_weight'" in done.stderr
    unknown = check_config("--configfile", "config/demo.yaml", "--config", "retreival={seed: 1}")
    assert unknown.returncode == 1 and "'retreival' was unexpected" in unknown.stderr


def test_check_config_reference_is_markdown_of_every_key():
    done = check_config("--reference")
    assert done.returncode == 0
    assert "| `vit.dino.koleo_weight` | number | `0.1` |" in done.stdout
    assert "| `plates` |" in done.stdout and "required" in done.stdout.split("| `plates` |")[1].splitlines()[0]
