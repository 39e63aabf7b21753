"""One rule for relative paths (paintbench.config.PATH_RULE): the working directory first; for input paths, the
workflow folder's copy when the working directory has none; absolute paths as given."""

from __future__ import annotations

import pytest

import shutil
from pathlib import Path

from paintbench.config import PATH_RULE, load_schema, resolve_command, resolve_input_path
from tests.helpers import REPO, snakemake


def test_a_path_present_in_the_working_directory_wins(tmp_path):
    (tmp_path / "config" / "metadata").mkdir(parents=True)
    assert resolve_input_path("config/metadata", tmp_path, REPO) == tmp_path / "config" / "metadata"


def test_an_absent_path_falls_back_to_the_workflow_folder(tmp_path):
    assert resolve_input_path("config/metadata", tmp_path, REPO) == REPO / "config" / "metadata"
    assert resolve_command(".venvs/cellprofiler/bin/cellprofiler", tmp_path, REPO) == \
        str(REPO / ".venvs" / "cellprofiler" / "bin" / "cellprofiler")


def test_absolute_paths_and_bare_commands_are_untouched(tmp_path):
    assert resolve_input_path(tmp_path / "elsewhere", Path("/nonexistent"), REPO) == tmp_path / "elsewhere"
    assert resolve_command("cellprofiler", tmp_path, REPO) == "cellprofiler"  # looked up on PATH at run time


def test_the_working_directory_defaults_to_the_current_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.cppipe").write_text("")
    assert resolve_input_path("my.cppipe") == tmp_path / "my.cppipe"


def test_check_config_reads_the_working_directorys_metadata(tmp_path, monkeypatch):
    """check_semantics follows the same rule: a metadata_dir of the working directory is the one validated."""
    from paintbench.config import ConfigError, load_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config" / "metadata").mkdir(parents=True)  # present but empty: it wins, and fails
    try:
        load_config(REPO / "config" / "demo.yaml")
    except ConfigError as err:
        assert "metadata_dir" in str(err) and str(tmp_path) in str(err)
    else:
        raise AssertionError("an empty metadata_dir in the working directory was not the one used")


def test_the_rule_is_stated_in_the_schema():
    schema = load_schema()
    assert " ".join(PATH_RULE.split()) in " ".join(schema["description"].split())
    described = {
        "metadata_dir": schema["properties"]["metadata_dir"],
        "cellprofiler.pipeline": schema["properties"]["cellprofiler"]["properties"]["pipeline"],
        "cellprofiler.executable": schema["properties"]["cellprofiler"]["properties"]["executable"],
        "vit.dino.checkpoint": schema["properties"]["vit"]["properties"]["dino"]["properties"]["checkpoint"],
    }
    for key, subschema in described.items():
        assert "working directory, then in the workflow folder" in " ".join(subschema["description"].split()), key


@pytest.mark.slow
def test_the_workflow_uses_the_working_directorys_pipeline_and_the_bundled_metadata(tmp_path):
    """snakemake --directory tmp: config/cellprofiler/analysis_demo.cppipe exists there (its copy is used);
    config/metadata does not (the workflow folder's is)."""
    pipeline = tmp_path / "config" / "cellprofiler" / "analysis_demo.cppipe"
    pipeline.parent.mkdir(parents=True)
    shutil.copy(REPO / "config" / "cellprofiler" / "analysis_demo.cppipe", pipeline)
    out = snakemake(["-n", "-p", "--configfile", str(REPO / "config" / "demo.yaml"), "--config", "feature_sets=[cellprofiler]"],
                    cwd=tmp_path)
    shown = out.stdout + out.stderr
    assert f"--pipeline {pipeline}" in shown
    assert f"--metadata-dir {REPO / 'config' / 'metadata'}" in shown
