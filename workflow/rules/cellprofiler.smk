# Stage 3a: real CellProfiler, sharded per plate x group of wells -> single cells -> well medians.


rule cellprofiler_shard:
    input:
        load_data=f"{RESULTS}/load_data/{{plate}}.csv",
        illum=rules.illum.output.functions,
        pipeline=CELLPROFILER["pipeline"],
    output:
        single_cells=temp(f"{RESULTS}/cellprofiler/{{plate}}/shards/{{shard}}.parquet"),
        qc=f"{RESULTS}/cellprofiler/{{plate}}/shards/{{shard}}.qc.parquet",
    log:
        f"{RESULTS}/logs/cellprofiler_shard/{{plate}}/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cellprofiler_shard/{{plate}}/{{shard}}.tsv"
    params:
        wells=lambda wildcards: ",".join(shard_wells_of(wildcards.plate, wildcards.shard)),
        illum_dir=lambda wildcards: f"{RESULTS}/illum/{wildcards.plate}",
        executable=CELLPROFILER["executable"],
        skip=SKIP_BAD_FIELDS,
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        disk_mb=lambda wildcards: disk_mb("cellprofiler")(wildcards) // len(plate_shards(wildcards.plate)),
        runtime=lambda wildcards: 30 + 3 * len(shard_wells_of(wildcards.plate, wildcards.shard)) * len(plate_sites(wildcards.plate)),
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench cellprofiler --load-data {input.load_data} --wells {params.wells}"
        " --illum-dir {params.illum_dir} --pipeline {input.pipeline} --executable {params.executable} {params.skip}"
        " --output {output.single_cells} --qc-output {output.qc} > {log} 2>&1"


rule cellprofiler_well_profiles:
    input:
        single_cells=lambda wildcards: expand(
            f"{RESULTS}/cellprofiler/{{plate}}/shards/{{shard}}.parquet", plate=wildcards.plate, shard=plate_shards(wildcards.plate)
        ),
        qc=lambda wildcards: expand(
            f"{RESULTS}/cellprofiler/{{plate}}/shards/{{shard}}.qc.parquet", plate=wildcards.plate, shard=plate_shards(wildcards.plate)
        ),
    output:
        profiles=f"{RESULTS}/profiles/cellprofiler/{{plate}}.parquet",
        single_cells=f"{RESULTS}/cellprofiler/{{plate}}/single_cells.parquet",
        qc=report(f"{RESULTS}/cellprofiler/{{plate}}/skipped_fields.tsv", caption="../report/skipped_fields.rst",
                  category="CellProfiler", subcategory="{plate}"),
    log:
        f"{RESULTS}/logs/cellprofiler_well_profiles/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cellprofiler_well_profiles/{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        disk_mb=disk_mb("cellprofiler"),
        runtime=60,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench well-profiles --single-cells {input.single_cells} --qc {input.qc} --operation median"
        " --merged-single-cells {output.single_cells} --qc-output {output.qc} --output {output.profiles} > {log} 2>&1"
