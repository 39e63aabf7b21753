# Stage 3b: self-supervised ViTs. Per plate: crop centres + a bounded pretraining sample; per method (mae, dino,
# simclr: feature sets vitmae, vitdino, vitsimclr) pretraining on every plate's sample (GPU, N GPUs with vit.gpus) ->
# embeddings of every crop streamed from the images (GPU) -> well means.

wildcard_constraints:
    method="mae|dino|simclr",



# Pretraining is the longest chain of the run (crops of every plate -> pretraining -> embedding): its jobs go
# first when cores are scarce, and CellProfiler fills the rest.
rule vit_crops:
    priority: 50
    input:
        load_data=f"{RESULTS}/load_data/{{plate}}.csv",
        illum=rules.illum.output.functions,
    output:
        crops=f"{RESULTS}/vit/crops/{{plate}}.npy",
        index=f"{RESULTS}/vit/crops/{{plate}}.parquet",
        norm=f"{RESULTS}/vit/crops/{{plate}}.norm.json",
        centres=f"{RESULTS}/vit/crops/{{plate}}.centres.parquet",
        qc=f"{RESULTS}/qc/{{plate}}/vit_crops.tsv",
    log:
        f"{RESULTS}/logs/vit_crops/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/vit_crops/{{plate}}.tsv"
    params:
        prefix=lambda wildcards: f"{RESULTS}/vit/crops/{wildcards.plate}",
        illum_dir=lambda wildcards: f"{RESULTS}/illum/{wildcards.plate}",
        mode=VIT["crop"],
        crop_size=VIT["crop_size"],
        cap=f"--max-crops-per-field {VIT['max_crops_per_field']}" if VIT["max_crops_per_field"] else "",
        sample=f"--sample-per-field {VIT['pretrain_crops_per_field']}" if VIT["pretrain_crops_per_field"] else "",
        seed=VIT["seed"],
        skip=SKIP_BAD_FIELDS,
    threads: max(1, VIT["num_workers"])
    resources:
        mem_mb=mem_mb(4000),
        disk_mb=disk_mb("vit_crops"),
        runtime=120,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench vit-crops --load-data {input.load_data} --illum-dir {params.illum_dir}"
        " --mode {params.mode} --crop-size {params.crop_size} {params.cap} {params.sample} --num-workers {threads}"
        " --seed {params.seed} {params.skip} --qc-output {output.qc} --output-prefix {params.prefix} > {log} 2>&1"


rule vit_pretrain:
    priority: 50
    input:
        crops=expand(f"{RESULTS}/vit/crops/{{plate}}.npy", plate=VIT_PRETRAIN_PLATES),
        index=expand(f"{RESULTS}/vit/crops/{{plate}}.parquet", plate=VIT_PRETRAIN_PLATES),
        norm=expand(f"{RESULTS}/vit/crops/{{plate}}.norm.json", plate=VIT_PRETRAIN_PLATES),
    output:
        encoder=f"{RESULTS}/vit/{{method}}/encoder.pt",
        log_table=f"{RESULTS}/vit/{{method}}/train_log.tsv",
        loss_plot=report(f"{RESULTS}/vit/{{method}}/train_loss.png", caption="../report/train_loss.rst",
                         category="ViT pretraining", subcategory="{method}"),
    log:
        f"{RESULTS}/logs/vit_pretrain/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/vit_pretrain/{{method}}.tsv"
    params:
        prefixes=lambda wildcards, input: " ".join(p.removesuffix(".npy") for p in input.crops),
        out_dir=lambda wildcards, output: os.path.dirname(output.encoder),
        args=vit_train_args,
    threads: max(1, VIT["num_workers"])
    resources:
        gpu=gpu_request(VIT["gpus"]),
        # Host memory of one pretraining job (GPU runs hold their batches on the device): 1.4 GB for the demo, ~5 GB
        # for ViT-S DINO on the CPU (scripts/bench_methods.py). 16 GB made a workstation run them one at a time.
        mem_mb=mem_mb(8000),
        runtime=24 * 60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench vit-pretrain --crops {params.prefixes} --out-dir {params.out_dir} {params.args}"
        " --num-workers {threads} > {log} 2>&1"


rule vit_embed:
    # One job per plate embeds it with every method's encoder: the plate's images are decoded once.
    input:
        load_data=f"{RESULTS}/load_data/{{plate}}.csv",
        illum=rules.illum.output.functions,
        norm=f"{RESULTS}/vit/crops/{{plate}}.norm.json",
        centres=f"{RESULTS}/vit/crops/{{plate}}.centres.parquet",
        encoders=[vit_encoder(method) for method in VIT_METHODS],
    output:
        profiles=expand(f"{RESULTS}/profiles/vit{{method}}/{{{{plate}}}}.parquet", method=VIT_METHODS),
        qc=f"{RESULTS}/qc/{{plate}}/vit_embed.tsv",
    log:
        f"{RESULTS}/logs/vit_embed/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/vit_embed/{{plate}}.tsv"
    params:
        prefix=lambda wildcards: f"{RESULTS}/vit/crops/{wildcards.plate}",
        illum_dir=lambda wildcards: f"{RESULTS}/illum/{wildcards.plate}",
        encoder_args=vit_encoder_args(),
        skip=SKIP_BAD_FIELDS,
        pooling=VIT["pooling"],
        batch_size=VIT["embed_batch_size"],
        device=VIT["device"],
    threads: max(1, VIT["num_workers"])
    resources:
        gpu=gpu_request(1),
        mem_mb=mem_mb(8000),
        runtime=120,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench vit-embed --crops {params.prefix} --load-data {input.load_data}"
        " --illum-dir {params.illum_dir} --encoder {input.encoders} {params.encoder_args}"
        " --pooling {params.pooling} --batch-size {params.batch_size} --device {params.device} {params.skip}"
        " --num-workers {threads} --qc-output {output.qc} --output {output.profiles} > {log} 2>&1"
