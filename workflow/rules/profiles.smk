# Stage 4: annotate, normalize per plate against negative controls, feature-select (CellProfiler): every feature set.


rule profiles:
    input:
        wells=lambda wildcards: [PATHS.well_profiles(wildcards.feature_set, plate) for plate in PLATES],
    output:
        normalized=PATHS.normalized("{feature_set}"),
        scored=PATHS.scored("{feature_set}"),
    log:
        PATHS.log("profiles", "{feature_set}"),
    benchmark:
        PATHS.benchmark("profiles", "{feature_set}")
    wildcard_constraints:
        feature_set=alternatives(IMAGE_FEATURE_SETS),
    params:
        selection=lambda wildcards: "--feature-selection" if wildcards.feature_set == CELLPROFILER else "",
        options=lambda wildcards: options(PROFILE_OPTIONS),
    threads: 1
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        # scored.parquet = the table the retrieval tasks use (feature-selected where selection applies).
        "python -m paintbench profiles --wells {input.wells} {params.selection} {params.options}"
        " --output {output.normalized} --scored-output {output.scored} > {log} 2>&1"


rule published_profiles:
    output:
        scored=PATHS.scored(PUBLISHED),
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
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench published-profiles --plates {params.plates} {params.options}"
        " --cache-dir {params.cache_dir} --output {output.scored} > {log} 2>&1"
