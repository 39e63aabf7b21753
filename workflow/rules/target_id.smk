# Stage 5b: from benchmark to biology, per feature set: how good the target-identification and virtual-screening
# shortlists are (recall@k, precision@k, best rank against random), and which target each multi-target compound
# follows (polypharmacology).


rule target_id:
    input:
        profiles=PATHS.scored("{feature_set}"),
    output:
        summary=PATHS.target_id("{feature_set}", "summary"),
        queries=PATHS.target_id("{feature_set}", "queries"),
        polypharmacology=PATHS.target_id("{feature_set}", "polypharmacology"),
        pairs=PATHS.target_id("{feature_set}", "pairs"),
    log:
        PATHS.log("target_id", "{feature_set}"),
    benchmark:
        PATHS.benchmark("target_id", "{feature_set}")
    params:
        options=lambda wildcards: options(TARGET_ID_OPTIONS),
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench target-id --profiles {input.profiles} {params.options}"
        " --output {output.summary} --queries-output {output.queries}"
        " --polypharmacology-output {output.polypharmacology} --pairs-output {output.pairs} > {log} 2>&1"
