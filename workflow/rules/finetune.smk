# Stage 3c: fine-tuning, the second phase (vit.finetune). A seeded split of the perturbations, grouped by target
# and gene; each pretrained method (vit_finetune, from the pretraining sample) and external encoder (encoder_finetune,
# from its own crops of the images) trained on the training side only; vit_embed and encoder_embed then embed them
# as <parent>_ft, scored with their parent on the held-out side (chain mad_heldout).

rule finetune_split:
    # The seeded, grouped split of the run's perturbations (vit.finetune): fine-tuning sees the training side only.
    output:
        PATHS.finetune_split(),
    log:
        PATHS.log("finetune_split"),
    benchmark:
        PATHS.benchmark("finetune_split")
    params:
        plates=" ".join(PLATES),
        options=lambda wildcards: options(SPLIT_OPTIONS),
    threads: 1
    localrule: True
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(2000),
        runtime=10,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench finetune-split --plates {params.plates}"
        " {params.options} --output {output} > {log} 2>&1"


rule vit_finetune:
    # The second phase: a pretrained encoder, a linear head classifying each crop's perturbation (training side).
    input:
        encoder=lambda wildcards: vit_encoder(wildcards.method),
        crops=[PATHS.crops(plate, "npy") for plate in VIT_PRETRAIN_PLATES],
        index=[PATHS.crops(plate, "parquet") for plate in VIT_PRETRAIN_PLATES],
        split=PATHS.finetune_split(),
    output:
        encoder=PATHS.vit_file("{method}_ft", "encoder.pt"),
        log_table=PATHS.vit_file("{method}_ft", "finetune_log.tsv"),
    log:
        PATHS.log("vit_finetune", "{method}"),
    benchmark:
        PATHS.benchmark("vit_finetune", "{method}")
    params:
        prefixes=lambda wildcards, input: " ".join(crop_prefix(p) for p in input.crops),
        out_dir=lambda wildcards, output: os.path.dirname(output.encoder),
        options=lambda wildcards: options(FINETUNE_OPTIONS),
    threads: max(1, VIT["num_workers"])
    resources:
        attempt=attempt_number,
        gpu=gpu_request(1),
        mem_mb=mem_mb(8000),
        runtime=24 * 60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench vit-finetune --encoder {input.encoder}"
        " --crops {params.prefixes} --split {input.split} {params.options} --num-workers {threads}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule encoder_finetune:
    # The second phase for an external encoder: its own crops of the training side's wells, a linear head, the
    # backbone trained through the path that embeds; encoder_embed then embeds it as <name>_ft.
    input:
        load_data=[PATHS.load_data(plate) for plate in VIT_PRETRAIN_PLATES],
        illum=plates_illum(VIT_PRETRAIN_PLATES),
        checkpoint=lambda wildcards: encoder_checkpoints([FINETUNED_ENCODERS[wildcards.tuned]]),
        split=PATHS.finetune_split(),
    output:
        backbone=PATHS.encoder_file("{tuned}", "backbone.pt"),
        log_table=PATHS.encoder_file("{tuned}", "finetune_log.tsv"),
    log:
        PATHS.log("encoder_finetune", "{tuned}"),
    benchmark:
        PATHS.benchmark("encoder_finetune", "{tuned}")
    wildcard_constraints:
        tuned=only(FINETUNED_ENCODERS),
    params:
        encoder=lambda wildcards: shlex_quote(json_text(encoder_entries()[FINETUNED_ENCODERS[wildcards.tuned]])),
        parent=lambda wildcards: FINETUNED_ENCODERS[wildcards.tuned],
        out_dir=lambda wildcards, output: os.path.dirname(output.backbone),
        options=lambda wildcards: options(ENCODER_FINETUNE_OPTIONS),
    threads: max(1, VIT["num_workers"])
    resources:
        attempt=attempt_number,
        gpu=gpu_request(1),
        mem_mb=mem_mb(8000),
        runtime=24 * 60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench encoder-finetune --name {params.parent}"
        " --encoder {params.encoder} --load-data {input.load_data} --illum {input.illum} --split {input.split}"
        " {params.options} --num-workers {threads} --out-dir {params.out_dir} > {log} 2>&1"
