# Stage 4: annotate every plate's wells of a feature set, then each of its profile chains (profiles.feature_sets):
# normalization, feature selection, whitening, ... as named steps (paintbench.chains).


rule profiles:
    input:
        wells=lambda wildcards: [PATHS.well_profiles(wildcards.feature_set, plate) for plate in PLATES],
    output:
        annotated=PATHS.annotated("{feature_set}"),
    log:
        PATHS.log("profiles", "{feature_set}"),
    benchmark:
        PATHS.benchmark("profiles", "{feature_set}")
    wildcard_constraints:
        feature_set=alternatives(ANNOTATED_SETS),
    params:
        options=lambda wildcards: options(PROFILE_OPTIONS),
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(8000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench profiles --wells {input.wells} {params.options} --output {output.annotated} > {log} 2>&1"


rule precomputed_profiles:
    # A user's table of embeddings (config key precomputed.<name>), checked against the run's wells of each plate.
    input:
        table=precomputed_table,
    output:
        PATHS.well_profiles("{feature_set}", "{plate}"),
    log:
        PATHS.log("precomputed_profiles", "{feature_set}", "{plate}"),
    benchmark:
        PATHS.benchmark("precomputed_profiles", "{feature_set}", "{plate}")
    wildcard_constraints:
        feature_set=only(PRECOMPUTED),
    params:
        wells=lambda wildcards: ",".join(plate_wells(wildcards.plate)),
        options=lambda wildcards: options([METADATA_DIR_OPTION]),
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench precomputed-profiles --table {input.table} --plate {wildcards.plate}"
        " --wells {params.wells} {params.options} --output {output} > {log} 2>&1"


rule published_profiles:
    output:
        annotated=PATHS.annotated(PUBLISHED),
    log:
        PATHS.log("profiles", PUBLISHED),
    benchmark:
        PATHS.benchmark("profiles", PUBLISHED)
    params:
        plates=" ".join(PLATES),
        options=lambda wildcards: options(S3_OPTIONS, [METADATA_DIR_OPTION]),
        cache_dir=PATHS.published_cache(),
    threads: 1
    localrule: True
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench published-profiles --plates {params.plates} {params.options}"
        " --cache-dir {params.cache_dir} --output {output.annotated} > {log} 2>&1"


rule profile_chain:
    input:
        annotated=PATHS.annotated("{feature_set}"),
        split=chain_inputs,
    output:
        scored=PATHS.scored("{feature_set}/{chain}"),
        steps=PATHS.chain_steps("{feature_set}/{chain}"),
    log:
        PATHS.log("profiles", "{feature_set}", "{chain}"),
    benchmark:
        PATHS.benchmark("profiles", "{feature_set}", "{chain}")
    params:
        steps=lambda wildcards: " ".join(CHAINS[wildcards.chain]),
        step_options=lambda wildcards: chain_step_options(wildcards.chain),
        options=lambda wildcards: options(PROFILE_CHAIN_OPTIONS),
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(8000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench profile-chain --profiles {input.annotated}"
        " --name {wildcards.feature_set}/{wildcards.chain} --steps {params.steps} {params.options}"
        " --step-options '{params.step_options}' --output {output.scored} --steps-output {output.steps} > {log} 2>&1"
