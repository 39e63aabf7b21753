# Stage 1: images + one CellProfiler LoadData table per plate, whatever the source (s3, local, synthetic).


rule synthetic_ground_truth:
    output:
        truth=PATHS.ground_truth(),
        positions=PATHS.position_effects(),
    log:
        PATHS.log("synthetic_ground_truth"),
    benchmark:
        PATHS.benchmark("synthetic_ground_truth")
    params:
        platemaps=lambda wildcards: ",".join(sorted({plate_info(p, METADATA_DIR).platemap for p in PLATES})),
        options=lambda wildcards: options(GROUND_TRUTH_OPTIONS),
        metadata_dir=METADATA_DIR,
        classes=gene_classes_words(config["synthetic"]["gene_classes"]),
    threads: 1
    localrule: True
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(1000),
        runtime=10,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench ground-truth --platemaps {params.platemaps} --metadata-dir {params.metadata_dir}"
        " {params.options} --gene-classes {params.classes} --output {output.truth}"
        " --position-output {output.positions} > {log} 2>&1"


rule download:
    input:
        branch(config["source"] == "synthetic", then=rules.synthetic_ground_truth.output.truth),
    output:
        load_data=PATHS.load_data("{plate}"),
        qc=PATHS.qc_fragment("{plate}", "download"),
    log:
        PATHS.log("download", "{plate}"),
    benchmark:
        PATHS.benchmark("download", "{plate}")
    params:
        image_dir=lambda wildcards: plate_image_dir(wildcards.plate),
        wells=lambda wildcards: ",".join(plate_wells(wildcards.plate)),
        sites=lambda wildcards: ",".join(map(str, plate_sites(wildcards.plate))),
        channels=channel_arg(),
        options=lambda wildcards: options(DOWNLOAD_OPTIONS),  # a function: the image pattern's {2} is no wildcard
        metadata_dir=METADATA_DIR,
        source_args=source_args,
        # A local folder's images (names, sizes, modification times): replacing or adding one reruns the plate.
        images=lambda wildcards: local_images_digest(wildcards.plate),
    threads: 1
    localrule: True
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(2000),
        disk_mb=disk_mb("download"),
        download=1,  # capped by the profiles' global `download` resource: transfers the head node runs at once
        runtime=240,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench download --plate {wildcards.plate} --wells {params.wells} --sites {params.sites}"
        " --channels {params.channels} --image-dir {params.image_dir} --metadata-dir {params.metadata_dir}"
        " {params.options} {params.source_args} --qc-output {output.qc} --output {output.load_data} > {log} 2>&1"


rule plate_qc:
    input:
        load_data=rules.download.output.load_data,
        fragments=plate_qc_fragments,
    output:
        qc=PATHS.plate_qc("{plate}"),
    log:
        PATHS.log("plate_qc", "{plate}"),
    benchmark:
        PATHS.benchmark("plate_qc", "{plate}")
    params:
        wells=lambda wildcards: ",".join(plate_wells(wildcards.plate)),
    threads: 1
    localrule: True
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(1000),
        runtime=10,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench plate-qc --load-data {input.load_data} --fragments {input.fragments}"
        " --wells {params.wells} --output {output.qc} > {log} 2>&1"


rule missing_fields:
    input:
        [PATHS.qc_fragment(plate, "download") for plate in PLATES],
    output:
        PATHS.missing_fields(),
    log:
        PATHS.log("missing_fields"),
    threads: 1
    localrule: True
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(1000),
        runtime=10,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench plate-qc --fragments {input} --output {output} > {log} 2>&1"
