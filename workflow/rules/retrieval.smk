# Stage 5: the three CPJUMP1 retrieval tasks per feature set under retrieval.protocol: AP, p, BH q, fraction retrieved.


rule replicate_retrieval:
    input:
        profiles=f"{RESULTS}/profiles/{{feature_set}}/scored.parquet",
    output:
        scored=f"{RESULTS}/retrieval/{{feature_set}}/replicate_retrieval.parquet",
        ap=f"{RESULTS}/retrieval/{{feature_set}}/replicate_retrieval_ap.parquet",
    log:
        f"{RESULTS}/logs/retrieval/{{feature_set}}/replicate_retrieval.log",
    benchmark:
        f"{RESULTS}/benchmarks/retrieval/{{feature_set}}/replicate_retrieval.tsv"
    params:
        retrieval=retrieval_args(),
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench retrieval --profiles {input.profiles} --task replicate_retrieval"
        " {params.retrieval} --output {output.scored} --ap-output {output.ap}"
        " > {log} 2>&1"


rule matching:
    input:
        profiles=f"{RESULTS}/profiles/{{feature_set}}/scored.parquet",
        replicate=f"{RESULTS}/retrieval/{{feature_set}}/replicate_retrieval.parquet",
    output:
        scored=f"{RESULTS}/retrieval/{{feature_set}}/{{task}}.parquet",
        ap=f"{RESULTS}/retrieval/{{feature_set}}/{{task}}_ap.parquet",
    log:
        f"{RESULTS}/logs/retrieval/{{feature_set}}/{{task}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/retrieval/{{feature_set}}/{{task}}.tsv"
    wildcard_constraints:
        task="sister_matching|compound_gene_matching",
    params:
        retrieval=retrieval_args(),
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench retrieval --profiles {input.profiles} --task {wildcards.task}"
        " --replicate-results {input.replicate} {params.retrieval}"
        " --output {output.scored} --ap-output {output.ap} > {log} 2>&1"
