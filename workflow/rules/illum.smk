# Stage 2: one illumination function per plate and fluorescent channel, shared by both feature branches.


# A plate's illumination gates both of its branches: first, on one core, so that it never waits for two free cores
# while single-thread CellProfiler shards hold them (reading the images is what it spends its time on).
rule illum:
    priority: 60
    input:
        load_data=f"{RESULTS}/load_data/{{plate}}.csv",
    output:
        functions=expand(f"{RESULTS}/illum/{{{{plate}}}}/{{{{plate}}}}_Illum{{channel}}.npy", channel=FLUORESCENT),
        qc=f"{RESULTS}/qc/{{plate}}/illum.tsv",
    log:
        f"{RESULTS}/logs/illum/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/illum/{{plate}}.tsv"
    params:
        output_dir=lambda wildcards: f"{RESULTS}/illum/{wildcards.plate}",
        source=config["illum"]["source"],
        smoothing=config["illum"]["smoothing_fraction"],
        gallery_args=gallery_args,
        metadata_dir=METADATA_DIR,
        skip=SKIP_BAD_FIELDS,
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=120,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench illum --load-data {input.load_data} --output-dir {params.output_dir}"
        " --source {params.source} --threads {threads} --smoothing-fraction {params.smoothing}"
        " --metadata-dir {params.metadata_dir} {params.gallery_args} {params.skip} --qc-output {output.qc} > {log} 2>&1"
