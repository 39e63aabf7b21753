# Stage 6: summary table, figures and the self-contained HTML report; feature sets side by side. Each rule
# declares every file its command reads (report_inputs) and names the same files on the command (report_args).
# The summary reads every profile set (every feature set under every chain: the bake-off); figures and the page
# each feature set's headline chain, named by the feature set.
SUMMARY_INPUTS = [*TASKS, "shortlists", "layout_controls", "chain_steps"]
FIGURE_INPUTS = [*TASKS, "replicate_ap", "polypharmacology", "profiles", "illum", "cell_counts", "crops",
                 "train_logs", "mae_checkpoint"]
HTML_INPUTS = [*TASKS, "polypharmacology", "pairs", "qc", "cell_counts", "crop_centres", "ground_truth"]


rule report_summary:
    input:
        unpack(report_inputs(*SUMMARY_INPUTS, scope="all")),
        published=paper_values(),
    output:
        summary=report(PATHS.summary(), caption="../report/summary.rst", category="Report"),
        comparisons=PATHS.comparisons(),
    log:
        PATHS.log("report", "summary"),
    benchmark:
        PATHS.benchmark("report", "summary")
    params:
        files=lambda wildcards: report_args(*SUMMARY_INPUTS, scope="all"),
        dataset=run_dataset(),
    localrule: True
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(2000),
        runtime=10,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench report-summary {params.files} --published {input.published} --dataset {params.dataset}"
        " --comparisons-output {output.comparisons} --output {output.summary} > {log} 2>&1"


rule report_figures:
    input:
        unpack(report_inputs(*FIGURE_INPUTS)),
        summary=rules.report_summary.output.summary,
    output:
        figures=report(directory(PATHS.figures_dir()), patterns=["{name}.png"],
                       caption="../report/figures.rst", category="Figures"),
    log:
        PATHS.log("report", "figures"),
    benchmark:
        PATHS.benchmark("report", "figures")
    params:
        files=lambda wildcards: report_args(*FIGURE_INPUTS),
        plates=" ".join(PLATES),
        metadata_dir=METADATA_DIR,
    localrule: True
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(4000),
        runtime=30,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench report-figures --summary {input.summary} --plates {params.plates} {params.files}"
        " --metadata-dir {params.metadata_dir} --figures-dir {output.figures} > {log} 2>&1"


rule report_html:
    input:
        unpack(report_inputs(*HTML_INPUTS)),
        summary=rules.report_summary.output.summary,
        figures=rules.report_figures.output.figures,
    output:
        html=report(PATHS.report_html(), caption="../report/index.rst", category="Report"),
    log:
        PATHS.log("report", "html"),
    benchmark:
        PATHS.benchmark("report", "html")
    params:
        files=lambda wildcards: report_args(*HTML_INPUTS),
        plates=" ".join(PLATES),
        # The effective configuration (config files + --config), as the run used it.
        config=lambda wildcards: yaml.safe_dump(dict(config), sort_keys=False),
        cellprofiler=RESOLVED["cellprofiler.executable"],
    localrule: True
    threads: 1
    resources:
        attempt=attempt_number,
        mem_mb=mem_mb(2000),
        runtime=10,
    conda:
        "../../envs/paintbench.yaml"
    shell:
        "PAINTBENCH_ATTEMPT={resources.attempt} python -m paintbench report-html --summary {input.summary} --figures-dir {input.figures} --plates {params.plates}"
        " {params.files} --config-text {params.config:q} --cellprofiler {params.cellprofiler} --output {output.html}"
        " > {log} 2>&1"
