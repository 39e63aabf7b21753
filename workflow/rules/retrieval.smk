# Stage 5: the three CPJUMP1 retrieval tasks per profile set (feature set and chain) under retrieval.protocol: AP, p, BH q, fraction retrieved.


rule replicate_retrieval:
    input:
        profiles=PATHS.scored("{feature_set}/{chain}"),
    output:
        scored=PATHS.retrieval("{feature_set}/{chain}", "replicate_retrieval"),
        ap=PATHS.retrieval("{feature_set}/{chain}", "replicate_retrieval", per_query=True),
    log:
        PATHS.log("retrieval", "{feature_set}/{chain}", "replicate_retrieval"),
    benchmark:
        PATHS.benchmark("retrieval", "{feature_set}/{chain}", "replicate_retrieval")
    params:
        options=lambda wildcards: options(RETRIEVAL_OPTIONS),
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench retrieval --profiles {input.profiles} --task replicate_retrieval {params.options}"
        " --output {output.scored} --ap-output {output.ap} > {log} 2>&1"


rule matching:
    input:
        profiles=PATHS.scored("{feature_set}/{chain}"),
        replicate=rules.replicate_retrieval.output.scored,
    output:
        scored=PATHS.retrieval("{feature_set}/{chain}", "{task}"),
        ap=PATHS.retrieval("{feature_set}/{chain}", "{task}", per_query=True),
    log:
        PATHS.log("retrieval", "{feature_set}/{chain}", "{task}"),
    benchmark:
        PATHS.benchmark("retrieval", "{feature_set}/{chain}", "{task}")
    wildcard_constraints:
        task=alternatives(MATCHING_TASKS),
    params:
        options=lambda wildcards: options(RETRIEVAL_OPTIONS),
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench retrieval --profiles {input.profiles} --task {wildcards.task}"
        " --replicate-results {input.replicate} {params.options}"
        " --output {output.scored} --ap-output {output.ap} > {log} 2>&1"


rule layout_controls:
    input:
        profiles=PATHS.scored("{feature_set}/{chain}"),
    output:
        controls=PATHS.layout_controls("{feature_set}/{chain}"),
    log:
        PATHS.log("retrieval", "{feature_set}", "{chain}", "layout_controls"),
    benchmark:
        PATHS.benchmark("retrieval", "{feature_set}", "{chain}", "layout_controls")
    params:
        options=lambda wildcards: options(LAYOUT_CONTROL_OPTIONS),
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        # Same-position controls, replicates in other positions, label-shuffled replicates (the chain's false
        # discoveries), plate predictability, nearest-neighbour target accuracy.
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench layout-controls --profiles {input.profiles} {params.options}"
        " --output {output.controls} > {log} 2>&1"
