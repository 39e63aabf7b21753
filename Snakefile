# paintbench: Cell Painting images -> CellProfiler and ViT-MAE profiles -> CPJUMP1 retrieval benchmarks.
# Stages, one rule file each, data flowing one way: download -> illum -> (cellprofiler | vit) -> profiles
# -> retrieval -> report. See README.md for the picture, docs/config.md for the configuration keys.
import os
import sys

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

min_version("9.0")

# The package's source is importable here and by every job, in the venv or a `--sdm conda` env alike;
# without conda, jobs use the Python that runs Snakemake (the venv need not be activated).
_SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, _SRC)
_USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
_PYTHON_BIN = os.path.dirname(sys.executable)
_PATH = "" if _USE_CONDA else f"export PATH={_PYTHON_BIN}:$PATH; "
shell.prefix(f"set -euo pipefail; export PYTHONPATH={_SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; {_PATH}")

from paintbench.config import check_config


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# Ours first: its messages name the key and the allowed values. Snakemake's then applies the same schema.
check_config(config)
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


wildcard_constraints:
    plate=alternatives(PLATES),
    shard=r"s\d{3}",
    feature_set=alternatives(FEATURE_SETS),
    chain=alternatives(RUN_CHAINS),


include: "workflow/rules/download.smk"
include: "workflow/rules/illum.smk"
include: "workflow/rules/cellprofiler.smk"
include: "workflow/rules/vit.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/profiles.smk"
include: "workflow/rules/retrieval.smk"
include: "workflow/rules/target_id.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
