# Stage 3b: self-supervised ViTs. Per plate: crop centres + a bounded pretraining sample; per method (mae, dino,
# simclr: feature sets vitmae, vitdino, vitsimclr) pretraining on every plate's sample (GPU, N GPUs with vit.gpus) ->
# embeddings of every crop streamed from the images (GPU) -> well means.

wildcard_constraints:
    method=alternatives(VIT_METHODS),


# Pretraining is the longest chain of the run (crops of every plate -> pretraining -> embedding): its jobs go
# first when cores are scarce, and CellProfiler fills the rest.
rule vit_crops:
    priority: 50
    input:
        load_data=PATHS.load_data("{plate}"),
        illum=rules.illum.output.functions,
    output:
        crops=PATHS.crops("{plate}", "npy"),
        index=PATHS.crops("{plate}", "parquet"),
        norm=PATHS.crops("{plate}", "norm.json"),
        centres=PATHS.crops("{plate}", "centres.parquet"),
        qc=PATHS.qc_fragment("{plate}", "vit_crops"),
    log:
        PATHS.log("vit_crops", "{plate}"),
    benchmark:
        PATHS.benchmark("vit_crops", "{plate}")
    params:
        prefix=lambda wildcards, output: crop_prefix(output.crops),
        options=lambda wildcards: options(CROP_OPTIONS),
    threads: max(1, VIT["num_workers"])
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(4000),
        disk_mb=disk_mb("vit_crops"),
        runtime=120,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench vit-crops --load-data {input.load_data} --illum {input.illum} {params.options}"
        " --num-workers {threads} --qc-output {output.qc} --output-prefix {params.prefix} > {log} 2>&1"


rule vit_pretrain:
    priority: 50
    input:
        crops=[PATHS.crops(plate, "npy") for plate in VIT_PRETRAIN_PLATES],
        index=[PATHS.crops(plate, "parquet") for plate in VIT_PRETRAIN_PLATES],
        norm=[PATHS.crops(plate, "norm.json") for plate in VIT_PRETRAIN_PLATES],
    output:
        encoder=PATHS.vit_file("{method}", "encoder.pt"),
        checkpoint=PATHS.vit_file("{method}", "checkpoint.pt"),
        log_table=PATHS.vit_file("{method}", "train_log.tsv"),
        loss_plot=report(PATHS.vit_file("{method}", "train_loss.png"), caption="../report/train_loss.rst",
                         category="ViT pretraining", subcategory="{method}"),
    log:
        PATHS.log("vit_pretrain", "{method}"),
    benchmark:
        PATHS.benchmark("vit_pretrain", "{method}")
    params:
        prefixes=lambda wildcards, input: " ".join(crop_prefix(p) for p in input.crops),
        out_dir=lambda wildcards, output: os.path.dirname(output.encoder),
        args=vit_train_args,
    threads: max(1, VIT["num_workers"])
    resources:
        attempt=attempt_number,
        gpu=gpu_request(VIT["gpus"]),
        # Host memory of one pretraining job (GPU runs hold their batches on the device): 1.4 GB for the demo, ~5 GB
        # for ViT-S DINO on the CPU (scripts/bench_methods.py). 16 GB made a workstation run them one at a time.
        mem_mb=mem_mb(8000),
        runtime=24 * 60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench vit-pretrain --crops {params.prefixes} --out-dir {params.out_dir} {params.args}"
        " --num-workers {threads} > {log} 2>&1"


rule vit_embed:
    # One job per plate embeds it with every method's encoder, fine-tuned ones included: the plate's images are
    # decoded once.
    input:
        load_data=PATHS.load_data("{plate}"),
        illum=rules.illum.output.functions,
        norm=PATHS.crops("{plate}", "norm.json"),
        centres=PATHS.crops("{plate}", "centres.parquet"),
        encoders=list(embedded_encoders().values()),
    output:
        profiles=[PATHS.well_profiles(fs, "{plate}") for fs in embedded_encoders()],
        qc=PATHS.qc_fragment("{plate}", "vit_embed"),
    log:
        PATHS.log("vit_embed", "{plate}"),
    benchmark:
        PATHS.benchmark("vit_embed", "{plate}")
    params:
        prefix=lambda wildcards, input: crop_prefix(input.centres),
        encoder_args=lambda wildcards: vit_encoder_args(),
        options=lambda wildcards: options(EMBED_OPTIONS),
    threads: max(1, VIT["num_workers"])
    resources:
        attempt=attempt_number,
        gpu=gpu_request(1),
        mem_mb=mem_mb(8000),
        runtime=120,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench vit-embed --crops {params.prefix} --load-data {input.load_data} --illum {input.illum}"
        " --encoder {input.encoders} {params.encoder_args} {params.options} --num-workers {threads}"
        " --qc-output {output.qc} --output {output.profiles} > {log} 2>&1"


rule encoder_embed:
    # One job per plate embeds it with every external encoder (config key encoders), fine-tuned ones included: each
    # format's crops, scaling and pooling (paintbench.encoder_formats); the weights are read strictly before any image.
    input:
        load_data=PATHS.load_data("{plate}"),
        illum=rules.illum.output.functions,
        checkpoints=encoder_checkpoints(),
    output:
        profiles=[PATHS.well_profiles(name, "{plate}") for name in encoder_entries()],
        qc=PATHS.qc_fragment("{plate}", "encoder_embed"),
    log:
        PATHS.log("encoder_embed", "{plate}"),
    benchmark:
        PATHS.benchmark("encoder_embed", "{plate}")
    params:
        encoders=lambda wildcards: shlex_quote(json_text(encoder_entries())),
        outputs=lambda wildcards, output: " ".join(f"{name}={path}" for name, path in zip(encoder_entries(), output.profiles)),
        options=lambda wildcards: options(ENCODER_EMBED_OPTIONS),
    threads: max(1, VIT["num_workers"])
    resources:
        attempt=attempt_number,
        gpu=gpu_request(1),
        mem_mb=mem_mb(8000),
        runtime=240,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench encoder-embed --load-data {input.load_data} --illum {input.illum}"
        " --encoders {params.encoders} {params.options} --num-workers {threads}"
        " --qc-output {output.qc} --output {params.outputs} > {log} 2>&1"
