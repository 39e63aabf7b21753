# Stage 1: images + one CellProfiler LoadData table per plate, whatever the source (s3, local, synthetic).


rule synthetic_ground_truth:
    output:
        f"{RESULTS}/synthetic/ground_truth.parquet",
    log:
        f"{RESULTS}/logs/synthetic_ground_truth.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthetic_ground_truth.tsv"
    params:
        platemaps=lambda wildcards: ",".join(sorted({plate_info(p, METADATA_DIR).platemap for p in PLATES})),
        metadata_dir=METADATA_DIR,
        seed=config["synthetic"]["seed"],
        strong=config["synthetic"]["strong_fraction"],
        null=config["synthetic"]["null_fraction"],
        scale=config["synthetic"]["effect_scale"],
        classes=" ".join(f"{gene}={klass}" for gene, klass in config["synthetic"]["gene_classes"].items()),
    threads: 1
    localrule: True
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench ground-truth --platemaps {params.platemaps} --metadata-dir {params.metadata_dir}"
        " --seed {params.seed} --strong-fraction {params.strong} --null-fraction {params.null} --effect-scale {params.scale}"
        " --gene-classes {params.classes} --output {output} > {log} 2>&1"


rule download:
    input:
        branch(config["source"] == "synthetic", then=rules.synthetic_ground_truth.output),
    output:
        load_data=f"{RESULTS}/load_data/{{plate}}.csv",
        qc=f"{RESULTS}/qc/{{plate}}/download.tsv",
    log:
        f"{RESULTS}/logs/download/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/download/{{plate}}.tsv"
    params:
        source=config["source"],
        image_dir=lambda wildcards: plate_image_dir(wildcards.plate),
        wells=lambda wildcards: ",".join(plate_wells(wildcards.plate)),
        sites=lambda wildcards: ",".join(map(str, plate_sites(wildcards.plate))),
        channels=channel_arg(),
        image_pattern=lambda wildcards: config["image_pattern"],  # a function: its {2} etc. are not wildcards
        metadata_dir=METADATA_DIR,
        source_args=source_args,
        max_missing=QC["max_missing_fraction"],
    threads: 1
    localrule: True
    resources:
        mem_mb=mem_mb(2000),
        disk_mb=disk_mb("download"),
        download=1,  # capped by the profiles' global `download` resource: transfers the head node runs at once
        runtime=240,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench download --source {params.source} --plate {wildcards.plate}"
        " --wells {params.wells} --sites {params.sites} --channels {params.channels}"
        " --image-dir {params.image_dir} --image-pattern {params.image_pattern:q} --metadata-dir {params.metadata_dir}"
        " {params.source_args}"
        " --max-missing-fraction {params.max_missing} --qc-output {output.qc} --output {output.load_data} > {log} 2>&1"


rule plate_qc:
    input:
        load_data=rules.download.output.load_data,
        fragments=plate_qc_fragments,
    output:
        qc=f"{RESULTS}/qc/{{plate}}.tsv",
    log:
        f"{RESULTS}/logs/plate_qc/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plate_qc/{{plate}}.tsv"
    params:
        wells=lambda wildcards: ",".join(plate_wells(wildcards.plate)),
    threads: 1
    localrule: True
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench plate-qc --load-data {input.load_data} --fragments {input.fragments}"
        " --wells {params.wells} --output {output.qc} > {log} 2>&1"


rule missing_fields:
    input:
        expand(f"{RESULTS}/qc/{{plate}}/download.tsv", plate=PLATES),
    output:
        f"{RESULTS}/qc/missing_fields.tsv",
    log:
        f"{RESULTS}/logs/missing_fields.log",
    threads: 1
    localrule: True
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench plate-qc --fragments {input} --output {output} > {log} 2>&1"
