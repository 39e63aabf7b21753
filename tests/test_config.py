"""Configuration: schema defaults, and invalid configuration rejected with the key named."""

from __future__ import annotations

import copy

import pytest
import yaml

from paintbench.config import ConfigError, check_config, load_config
from tests.helpers import REPO

DEMO = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


def demo(**overrides) -> dict:
    config = copy.deepcopy(DEMO)
    config.update(overrides)
    return config


def test_shipped_configs_are_valid_and_defaults_are_filled():
    real = load_config(REPO / "config" / "config.yaml")
    assert real["source"] == "s3" and real["endpoint_url"] is None
    assert len(real["plates"]) == 10
    demo_config = load_config(REPO / "config" / "demo.yaml")
    assert demo_config["endpoint_url"] is None  # default filled
    assert demo_config["download"]["max_attempts"] == 6  # nested default filled
    assert demo_config["synthetic"]["seed"] == 7
    assert demo_config["cellprofiler"]["wells_per_shard"] == 72 and not demo_config["cellprofiler"]["skip_bad_fields"]


def test_plates_all_expands_to_the_whole_batch():
    config = check_config(demo(plates="all"))
    assert len(config["plates"]) == 51
    assert "BR00116991" in config["plates"]


def test_plates_paper_is_the_papers_benchmark_set():
    config = check_config(demo(plates="paper"))
    assert len(config["plates"]) == 40 and "BR00117008" not in config["plates"]  # density 80: not the paper's


def test_paper_config_scores_published_profiles_only():
    config = load_config(REPO / "config" / "paper.yaml")
    assert config["feature_sets"] == ["published_cellprofiler"] and len(config["plates"]) == 40
    assert config["retrieval"]["protocol"] == "cpjump1" and config["retrieval"]["compound_gene_negatives"] == "paper_code"
    # published_profiles: true is the same as listing the feature set
    assert check_config(demo(source="s3", published_profiles=True))["feature_sets"][-1] == "published_cellprofiler"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"plates": ["BR00116991", "BR0011699X"]}, ["'plates'", "BR0011699X", "did you mean"]),
        ({"channels": {"ER": 4, "RNA": 3, "AGP": 2, "Mito": 1}}, ["'channels'", "'DNA' is a required property"]),
        ({"channels": {"DNA": 5, "ER": 5, "RNA": 3, "AGP": 2, "Mito": 1}}, ["'channels'", "several names"]),
        ({"wells": ["A01", "Q25"]}, ["'wells.1'", "'Q25'", "does not match"]),
        ({"wells": "some"}, ["'wells'", "'some'", "allowed"]),
        ({"sites": [1, -2]}, ["'sites.1'", "-2"]),
        ({"source": "ftp"}, ["'source'", "'ftp' is not one of ['s3', 'local', 'synthetic']"]),
        ({"colour": "blue"}, ["<top level>", "'colour'", "allowed keys"]),
        ({"synthetic": {"field_size": 10}}, ["'synthetic.field_size'", "10"]),
        ({"feature_sets": ["cellprofiler", "dino"]}, ["'feature_sets.1'", "'dino' is not one of"]),
        ({"feature_sets": ["published_cellprofiler"]}, ["'feature_sets'", "needs source: s3", "'synthetic'"]),
        ({"retrieval": {"protocol": "paper"}}, ["'retrieval.protocol'", "'paper' is not one of ['cpjump1', 'copairs']"]),
        ({"plates": "papers"}, ["'plates'", "'papers'", "allowed"]),
        ({"vit": {"dino": {"teacher_temperature": 0.04}}}, ["'vit.dino'", "'teacher_temperature'", "allowed keys"]),
        ({"vit": {"gpus": 3}}, ["'vit.mae.batch_size'", "256", "vit.gpus = 3"]),
        ({"vit": {"views": {"noise": -1}}}, ["'vit.views.noise'", "-1"]),
        ({"vit": {"mae": {"decoder_dim": 100, "decoder_heads": 8}}}, ["'vit.mae.decoder_dim'", "decoder_heads"]),
        # profile chains: an unknown step, an unknown chain, a step whose column the feature set lacks
        ({"profiles": {"chains": {"mine": ["mad", "whiten"]}}}, ["'profiles.chains.mine.1'", "'whiten' is not one of"]),
        ({"profiles": {"feature_sets": {"vit": ["mad", "mine"]}}},
         ["'profiles.feature_sets.vit'", "unknown chain 'mine'", "known: none, mad"]),
        ({"profiles": {"chains": {"counted": ["cc", "mad"]}, "feature_sets": {"vit": ["counted"]}}},
         ["'profiles.chains.counted'", "step cc", "Metadata_Object_Count", "vitmae"]),
        ({"profiles": {"chains": {"annotated": ["mad"]}}}, ["'profiles.chains.annotated'", "neither 'annotated'"]),
        ({"profiles": {"spherize": True}}, ["'profiles.spherize'", "profile chains", "mad_sphering"]),
        ({"profiles": {"steps": {"sphering": {"regularization": "best"}}}}, ["'profiles.steps.sphering.regularization'"]),
        ({"source": "s3", "feature_sets": ["published_cellprofiler"], "profiles": {"feature_sets": {"published": ["mad"]}}},
         ["'profiles.feature_sets.published'", "refits", "use none"]),
        # external encoders and precomputed embeddings: checked before any job
        ({"encoders": {"vitdino": {"format": "cell_dino", "checkpoint": "random"}}},
         ["'encoders.vitdino'", "unique, and none of cellprofiler"]),
        ({"encoders": {"mine": {"format": "cell_dino", "checkpoint": "weights/absent.pth"}}},
         ["'encoders.mine.checkpoint'", "no file weights/absent.pth"]),
        ({"encoders": {"mine": {"format": "onnx", "checkpoint": "random"}}}, ["'encoders.mine.format'", "'onnx'"]),
        ({"encoders": {"mine": {"format": "cell_dino"}}}, ["'encoders.mine'", "'checkpoint' is a required property"]),
        ({"encoders": {"mine": {"format": "cell_dino", "checkpoint": "random", "input_size": 100}}},
         ["'encoders.mine.input_size'", "multiple of the model's 8 px patches"]),
        ({"encoders": {"mine": {"format": "cell_dino", "checkpoint": "random", "chains": ["mad", "whiten"]}}},
         ["'encoders.mine.chains'", "unknown chain(s) ['whiten']"]),
        ({"precomputed": {"mine": {"path": "tables/{plate}.parquet"}}},
         ["'precomputed.mine.path'", "no file tables/BR00116991.parquet"]),
        ({"precomputed": {"mine": {"path": "x.parquet"}}, "encoders": {"mine": {"format": "cell_dino", "checkpoint": "random"}}},
         ["'encoders.mine'", "unique"]),
    ],
)
def test_invalid_configuration_names_the_key(overrides, expected):
    with pytest.raises(ConfigError) as error:
        check_config(demo(**overrides))
    for fragment in expected:
        assert fragment in str(error.value)


def test_method_sections_override_the_shared_training_keys_and_old_mae_keys_still_work(caplog):
    from paintbench.config import vit_method

    config = check_config(demo(vit={"steps": 100, "mask_ratio": 0.6, "dino": {"steps": 30, "local_crops": 4}}))
    assert vit_method(config, "dino")["steps"] == 30 and vit_method(config, "dino")["settings"]["local_crops"] == 4
    assert vit_method(config, "simclr")["steps"] == 100 and vit_method(config, "mae")["settings"]["mask_ratio"] == 0.6
    assert "'vit.mask_ratio' is deprecated: use vit.mae.mask_ratio" in caplog.text


def test_command_line_strings_are_typed_by_the_schema():
    """`--config` hands every value over as text: sites=[1,2] genes=null retrieval={null_size: 9000} ..."""
    config = check_config(demo(sites=["1", "2"], genes="null", published_profiles="false",
                               retrieval={"null_size": "9000"}, synthetic={"effect_scale": "1.5"},
                               channels={"DNA": "5", "ER": "4", "RNA": "3", "AGP": "2", "Mito": "1"}))
    assert config["sites"] == [1, 2] and config["genes"] is None and config["published_profiles"] is False
    assert config["retrieval"] == {"null_size": 9000, "seed": 0, "protocol": "cpjump1",
                                   "compound_gene_negatives": "disjoint", "precision": "float64"}
    assert config["synthetic"]["effect_scale"] == 1.5
    assert config["channels"]["DNA"] == 5
    with pytest.raises(ConfigError, match="'sites.0': 'one' is not of type 'integer'"):
        check_config(demo(sites=["one"]))


def test_the_chain_example_of_the_usage_guide_is_valid():
    """docs/usage.md's bake-off example, on the demo: every chain it adds is run by the kind that names it."""
    import re

    from paintbench.feature_sets import feature_set_chains

    text = (REPO / "docs" / "usage.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("profiles:"))
    config = check_config(demo(**yaml.safe_load(block)))
    chains = feature_set_chains(config)
    assert chains["vitdino"] == ["mad", "mad_pca_sphering"]
    assert chains["cellprofiler"] == ["mad_featselect", "mad_featselect_harmony"]
    assert config["profiles"]["steps"]["pca"]["variance"] == 0.95


def test_encoders_and_precomputed_tables_are_feature_sets_with_the_embedding_chains(tmp_path):
    from paintbench.feature_sets import feature_set_chains, run_feature_sets

    table = tmp_path / "mine.parquet"
    table.write_bytes(b"")
    config = check_config(demo(encoders={"cpssl": {"format": "cellpaintssl", "checkpoint": "random"}},
                               precomputed={"mine": {"path": str(table), "chains": ["mad_featselect"]}}))
    assert run_feature_sets(config)[-2:] == ["cpssl", "mine"]
    chains = feature_set_chains(config)
    assert chains["cpssl"] == chains["vitdino"] == ["mad", "mad_sphering"] and chains["mine"] == ["mad_featselect"]


def test_the_fine_tuning_example_of_the_usage_guide_is_valid():
    import re

    from paintbench.feature_sets import feature_set_chains, run_feature_sets

    text = (REPO / "docs" / "usage.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("vit:\n  finetune"))
    config = check_config(demo(vit={**DEMO["vit"], **yaml.safe_load(block)["vit"]}), preflight=False)
    assert "vitdino_ft" in run_feature_sets(config)
    chains = feature_set_chains(config)
    assert chains["vitdino_ft"] == ["mad_heldout"] and chains["vitdino"] == ["mad", "mad_sphering", "mad_heldout"]
    with pytest.raises(ConfigError, match="'vit.finetune.methods': dino is fine-tuned from feature set vitdino"):
        check_config(demo(feature_sets=["cellprofiler"], vit={**DEMO["vit"], "finetune": {"methods": ["dino"]}}),
                     preflight=False)


@pytest.mark.parametrize("example", ["demo_finetune.yaml", "small_vit_real_fields.yaml"])
def test_each_example_layer_over_the_demo_is_a_valid_configuration(example):
    """The layers docs/usage.md tells users to put over their configuration (here, over the demo) validate."""
    config = load_config([REPO / "config" / "demo.yaml", REPO / "config" / "examples" / example], preflight=False)
    assert config["source"] == "synthetic"
    if example == "demo_finetune.yaml":
        from paintbench.feature_sets import finetuned_sets

        assert finetuned_sets(config) == {"vitmae_ft": "vitmae", "vitdino_ft": "vitdino",
                                          "vitsimclr_ft": "vitsimclr", "cpssl_random_ft": "cpssl_random"}
