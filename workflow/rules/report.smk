# Stage 6: summary table, figures and the self-contained HTML report; feature sets side by side.
# The paper's CellProfiler values: metadata_dir's copy if it has one, else the bundled one (own plates need none).
_PAPER_TABLE = "cpjump1_published_cellprofiler.tsv"
PAPER_VALUES = (
    f"{METADATA_DIR}/{_PAPER_TABLE}"
    if os.path.exists(f"{METADATA_DIR}/{_PAPER_TABLE}")
    else f"{WORKFLOW_DIR}/config/metadata/{_PAPER_TABLE}"
)


rule report_summary:
    input:
        results=expand(f"{RESULTS}/retrieval/{{fs}}/{{task}}.parquet", fs=FEATURE_SETS, task=TASKS),
        target_id=expand(f"{RESULTS}/target_id/{{fs}}.parquet", fs=FEATURE_SETS),
        published=PAPER_VALUES,
    output:
        summary=report(f"{RESULTS}/reports/summary.tsv", caption="../report/summary.rst", category="Report"),
    log:
        f"{RESULTS}/logs/report/summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/summary.tsv"
    params:
        results_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.summary)),
        feature_sets=" ".join(FEATURE_SETS),
        dataset=run_dataset(),
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench report-summary --results-dir {params.results_dir} --feature-sets {params.feature_sets}"
        " --published {input.published} --dataset {params.dataset} --target-id --output {output.summary} > {log} 2>&1"


rule report_figures:
    input:
        unpack(report_inputs),
        summary=rules.report_summary.output.summary,
    output:
        figures=report(directory(f"{RESULTS}/reports/figures"), patterns=["{name}.png"],
                       caption="../report/figures.rst", category="Figures"),
    log:
        f"{RESULTS}/logs/report/figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/figures.tsv"
    params:
        results_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.figures)),
        feature_sets=" ".join(FEATURE_SETS),
        plates=" ".join(PLATES),
        metadata_dir=METADATA_DIR,
        train_dirs=lambda wildcards, input: (
            f"--train-dirs {' '.join(os.path.dirname(p) for p in input.train_logs)}" if "train_logs" in input.keys() else ""
        ),
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench report-figures --results-dir {params.results_dir} --feature-sets {params.feature_sets}"
        " --plates {params.plates} --summary {input.summary} {params.train_dirs} --metadata-dir {params.metadata_dir}"
        " --figures-dir {output.figures} > {log} 2>&1"


rule report_html:
    input:
        summary=rules.report_summary.output.summary,
        figures=rules.report_figures.output.figures,
        target_id=target_id_tables(),
    output:
        html=report(f"{RESULTS}/reports/index.html", caption="../report/index.rst", category="Report"),
    log:
        f"{RESULTS}/logs/report/html.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/html.tsv"
    params:
        results_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.html)),
        plates=" ".join(PLATES),
        # The effective configuration (config files + --config), as the run used it.
        config=lambda wildcards: yaml.safe_dump(dict(config), sort_keys=False),
        cellprofiler=CELLPROFILER["executable"],
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "python -m paintbench report-html --results-dir {params.results_dir} --plates {params.plates}"
        " --summary {input.summary} --figures-dir {input.figures} --config-text {params.config:q}"
        " --cellprofiler {params.cellprofiler} --output {output.html} > {log} 2>&1"
