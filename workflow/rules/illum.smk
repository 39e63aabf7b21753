# Stage 2: one illumination function per plate and fluorescent channel, shared by both feature branches.


# A plate's illumination gates both of its branches: first, on one core, so that it never waits for two free cores
# while single-thread CellProfiler shards hold them (reading the images is what it spends its time on).
rule illum:
    priority: 60
    input:
        load_data=PATHS.load_data("{plate}"),
    output:
        functions=illum_functions("{plate}"),
        qc=PATHS.qc_fragment("{plate}", "illum"),
    log:
        PATHS.log("illum", "{plate}"),
    benchmark:
        PATHS.benchmark("illum", "{plate}")
    params:
        output_dir=lambda wildcards, output: os.path.dirname(output.functions[0]),
        options=lambda wildcards: options(ILLUM_OPTIONS),
        gallery_args=gallery_args,
        metadata_dir=METADATA_DIR,
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(2000),
        runtime=120,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench illum --load-data {input.load_data} --output-dir {params.output_dir}"
        " {params.options} --threads {threads} --metadata-dir {params.metadata_dir} {params.gallery_args}"
        " --qc-output {output.qc} > {log} 2>&1"
