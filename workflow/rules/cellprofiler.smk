# Stage 3a: real CellProfiler, sharded per plate x group of wells -> single cells -> well medians.


rule cellprofiler_shard:
    input:
        load_data=PATHS.load_data("{plate}"),
        illum=rules.illum.output.functions,
        pipeline=RESOLVED["cellprofiler.pipeline"],
    output:
        single_cells=temp(PATHS.cellprofiler_shard("{plate}", "{shard}")),
        qc=PATHS.cellprofiler_shard_qc("{plate}", "{shard}"),
    log:
        PATHS.log("cellprofiler_shard", "{plate}", "{shard}"),
    benchmark:
        PATHS.benchmark("cellprofiler_shard", "{plate}", "{shard}")
    params:
        wells=lambda wildcards: ",".join(shard_wells_of(wildcards.plate, wildcards.shard)),
        options=lambda wildcards: options(CELLPROFILER_OPTIONS),
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(4000),
        disk_mb=lambda wildcards: disk_mb("cellprofiler")(wildcards) // len(plate_shards(wildcards.plate)),
        runtime=lambda wildcards: 30 + 3 * len(shard_wells_of(wildcards.plate, wildcards.shard)) * len(plate_sites(wildcards.plate)),
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench cellprofiler --load-data {input.load_data} --wells {params.wells}"
        " --illum {input.illum} {params.options}"
        " --output {output.single_cells} --qc-output {output.qc} > {log} 2>&1"


rule cellprofiler_well_profiles:
    input:
        single_cells=lambda wildcards: [PATHS.cellprofiler_shard(wildcards.plate, s) for s in plate_shards(wildcards.plate)],
        qc=lambda wildcards: [PATHS.cellprofiler_shard_qc(wildcards.plate, s) for s in plate_shards(wildcards.plate)],
    output:
        profiles=PATHS.well_profiles(CELLPROFILER, "{plate}"),
        single_cells=PATHS.single_cells("{plate}"),
        qc=report(PATHS.skipped_fields("{plate}"), caption="../report/skipped_fields.rst",
                  category="CellProfiler", subcategory="{plate}"),
    log:
        PATHS.log("cellprofiler_well_profiles", "{plate}"),
    benchmark:
        PATHS.benchmark("cellprofiler_well_profiles", "{plate}")
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(4000),
        disk_mb=disk_mb("cellprofiler"),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench well-profiles --single-cells {input.single_cells} --qc {input.qc} --operation median"
        " --merged-single-cells {output.single_cells} --qc-output {output.qc} --output {output.profiles} > {log} 2>&1"
