# Stage 5: the three CPJUMP1 retrieval tasks per feature set under retrieval.protocol: AP, p, BH q, fraction retrieved.


rule replicate_retrieval:
    input:
        profiles=PATHS.scored("{feature_set}"),
    output:
        scored=PATHS.retrieval("{feature_set}", "replicate_retrieval"),
        ap=PATHS.retrieval("{feature_set}", "replicate_retrieval", per_query=True),
    log:
        PATHS.log("retrieval", "{feature_set}", "replicate_retrieval"),
    benchmark:
        PATHS.benchmark("retrieval", "{feature_set}", "replicate_retrieval")
    params:
        options=lambda wildcards: options(RETRIEVAL_OPTIONS),
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench retrieval --profiles {input.profiles} --task replicate_retrieval {params.options}"
        " --output {output.scored} --ap-output {output.ap} > {log} 2>&1"


rule matching:
    input:
        profiles=PATHS.scored("{feature_set}"),
        replicate=rules.replicate_retrieval.output.scored,
    output:
        scored=PATHS.retrieval("{feature_set}", "{task}"),
        ap=PATHS.retrieval("{feature_set}", "{task}", per_query=True),
    log:
        PATHS.log("retrieval", "{feature_set}", "{task}"),
    benchmark:
        PATHS.benchmark("retrieval", "{feature_set}", "{task}")
    wildcard_constraints:
        task=alternatives(MATCHING_TASKS),
    params:
        options=lambda wildcards: options(RETRIEVAL_OPTIONS),
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench retrieval --profiles {input.profiles} --task {wildcards.task}"
        " --replicate-results {input.replicate} {params.options}"
        " --output {output.scored} --ap-output {output.ap} > {log} 2>&1"
