# Stage 5b: from benchmark to biology, per profile set (feature set and chain): how good the target-identification and virtual-screening
# shortlists are (recall@k, precision@k, best rank against random), and which target each multi-target compound
# follows (polypharmacology).


rule target_id:
    input:
        profiles=PATHS.scored("{feature_set}/{chain}"),
    output:
        summary=PATHS.target_id("{feature_set}/{chain}", "summary"),
        queries=PATHS.target_id("{feature_set}/{chain}", "queries"),
        polypharmacology=PATHS.target_id("{feature_set}/{chain}", "polypharmacology"),
        pairs=PATHS.target_id("{feature_set}/{chain}", "pairs"),
    log:
        PATHS.log("target_id", "{feature_set}/{chain}"),
    benchmark:
        PATHS.benchmark("target_id", "{feature_set}/{chain}")
    params:
        options=lambda wildcards: options(TARGET_ID_OPTIONS),
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench target-id --profiles {input.profiles} {params.options}"
        " --output {output.summary} --queries-output {output.queries}"
        " --polypharmacology-output {output.polypharmacology} --pairs-output {output.pairs} > {log} 2>&1"
