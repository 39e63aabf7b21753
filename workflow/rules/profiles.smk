# Stage 4: annotate, normalize per plate against negative controls, feature-select (CellProfiler): every feature set.


rule profiles:
    input:
        wells=lambda wildcards: expand(f"{RESULTS}/profiles/{wildcards.feature_set}/{{plate}}.parquet", plate=PLATES),
    output:
        normalized=f"{RESULTS}/profiles/{{feature_set}}/normalized.parquet",
        scored=f"{RESULTS}/profiles/{{feature_set}}/scored.parquet",
    log:
        f"{RESULTS}/logs/profiles/{{feature_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/profiles/{{feature_set}}.tsv"
    wildcard_constraints:
        feature_set="cellprofiler|vitmae|vitdino|vitsimclr",
    params:
        metadata_dir=METADATA_DIR,
        selection=lambda wildcards: "--feature-selection" if wildcards.feature_set == "cellprofiler" else "",
        spherize="--spherize" if config["profiles"]["spherize"] else "",
    threads: 1
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        # scored.parquet = the table the retrieval tasks use (feature-selected where selection applies).
        "python -m paintbench profiles --wells {input.wells} --metadata-dir {params.metadata_dir}"
        " {params.selection} {params.spherize} --output {output.normalized} --scored-output {output.scored}"
        " > {log} 2>&1"


rule published_profiles:
    output:
        scored=f"{RESULTS}/profiles/published_cellprofiler/scored.parquet",
    log:
        f"{RESULTS}/logs/profiles/published_cellprofiler.log",
    benchmark:
        f"{RESULTS}/benchmarks/profiles/published_cellprofiler.tsv"
    params:
        plates=" ".join(PLATES),
        metadata_dir=METADATA_DIR,
        s3=s3_args(),
        cache_dir=f"{DATA}/published_profiles",
    threads: 1
    localrule: True
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench published-profiles --plates {params.plates} --metadata-dir {params.metadata_dir}"
        " {params.s3} --cache-dir {params.cache_dir} --output {output.scored} > {log} 2>&1"
