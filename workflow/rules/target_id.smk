# Stage 5b: from benchmark to biology, per feature set: how good the target-identification and virtual-screening
# shortlists are (recall@k, precision@k, best rank against random), and which target each multi-target compound
# follows (polypharmacology).


rule target_id:
    input:
        profiles=f"{RESULTS}/profiles/{{feature_set}}/scored.parquet",
    output:
        summary=f"{RESULTS}/target_id/{{feature_set}}.parquet",
        queries=f"{RESULTS}/target_id/{{feature_set}}_queries.parquet",
        polypharmacology=f"{RESULTS}/target_id/{{feature_set}}_polypharmacology.parquet",
        pairs=f"{RESULTS}/target_id/{{feature_set}}_pairs.parquet",
    log:
        f"{RESULTS}/logs/target_id/{{feature_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/target_id/{{feature_set}}.tsv"
    params:
        alpha=config["target_id"]["alpha"],
        draws=config["target_id"]["draws"],
        seed=config["retrieval"]["seed"],
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench target-id --profiles {input.profiles} --alpha {params.alpha} --draws {params.draws}"
        " --seed {params.seed}"
        " --output {output.summary} --queries-output {output.queries}"
        " --polypharmacology-output {output.polypharmacology} --pairs-output {output.pairs} > {log} 2>&1"
