"""The report stage on a small demo run: summary rows, published reference rows, the HTML report rendered in
headless Chromium, Snakemake's own report, and the target look-up with its errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from tests.helpers import REPO, snakemake

pytestmark = pytest.mark.slow  # a small demo run through both branches to the report

FEATURE_SETS = ["cellprofiler", "vitmae", "vitdino", "vitsimclr", "cpssl_random"]  # the last: an external encoder
HEADLINE = {"cellprofiler": "cellprofiler/mad_featselect", **{fs: f"{fs}/mad" for fs in FEATURE_SETS[1:]}}
REPLICATE = {("A549", "compound", 24), ("A549", "crispr", 144), ("A549", "orf", 48)}
PAPER = {"compound": 0.7614, "crispr": 0.6787, "orf": 0.0563}  # CPJUMP1 paper's figure 4, A549 at these time points


def paintbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paintbench", *args], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}, timeout=300)


def conditions(summary: pd.DataFrame, feature_set: str, task: str) -> list[tuple]:
    rows = summary[(summary["profile_set"] == HEADLINE[feature_set]) & (summary["task"] == task)]
    return [tuple(None if pd.isna(v) else v for v in row) for row in rows[
        ["Metadata_cell_type", "Metadata_modality", "Metadata_timepoint", "Metadata_matched_modality",
         "Metadata_matched_timepoint"]].itertuples(index=False)]


def test_summary_has_every_task_condition_and_feature_set(small_demo_run):
    _, results = small_demo_run
    summary = pd.read_csv(results / "reports" / "summary.tsv", sep="\t")
    for fs in FEATURE_SETS:
        assert sorted(conditions(summary, fs, "replicate_retrieval")) == sorted(c + (None, None) for c in REPLICATE)
        assert sorted(conditions(summary, fs, "sister_matching")) == [("A549", "compound", 24, None, None),
                                                                      ("A549", "crispr", 144, None, None)]
        assert sorted(conditions(summary, fs, "compound_gene_matching")) == [("A549", "compound", 24, "crispr", 144),
                                                                             ("A549", "compound", 24, "orf", 48)]
        # Independent recomputation of one row from the task's own result table.
        table = pd.read_parquet(results / "retrieval" / HEADLINE[fs] / "replicate_retrieval.parquet")
        crispr = table[table["Metadata_modality"] == "crispr"]
        row = summary[(summary["profile_set"] == HEADLINE[fs]) & (summary["task"] == "replicate_retrieval")
                      & (summary["Metadata_modality"] == "crispr")].iloc[0]
        assert row["headline"] and row["chain"] == HEADLINE[fs].split("/")[1]
        assert row["n_perturbations"] == len(crispr) == 11  # six genes' guides (EZH2's two wells hold one guide)
        assert row["mean_average_precision"] == pytest.approx(crispr["mean_average_precision"].mean())
        assert row["fraction_retrieved"] == pytest.approx(crispr["below_corrected_p"].mean())
        # One replicate and 4 controls per list: a perfect list has p = 1/5, so nothing can be retrieved, and the
        # summary says so instead of reporting a silent zero.
        assert row["n_untestable"] == (~crispr["testable"]).sum() >= 10 and row["protocol"] == "cpjump1"
        sister = summary[(summary["feature_set"] == fs) & (summary["task"] == "sister_matching")]
        assert sister["profile_set"].nunique() == 2  # every chain of the feature set
        assert (sister["n_perturbations"] == 0).all() and sister["fraction_retrieved"].isna().all()
    reference = summary[summary["row_kind"] == "paper"]
    replicate = reference[reference["task"] == "replicate_retrieval"]
    assert dict(zip(replicate["Metadata_modality"], replicate["fraction_retrieved"])) == PAPER
    assert (reference["task"] == "compound_gene_matching").sum() == 2 and (reference["task"] == "sister_matching").sum() == 2
    assert not reference["comparable"].any() and reference["notes"].str.contains("synthetic").all()


def test_html_report_shows_the_planted_answer_and_the_protocol(small_demo_run):
    _, results = small_demo_run
    page = (results / "reports" / "index.html").read_text()
    assert "The planted answer" in page and "strong" in page and "null" in page
    assert "Significance protocol of this run: <b>cpjump1</b>" in page
    assert "can never reach q &lt; 0.05" in page  # the untestable lists are flagged


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium is needed to render the report: apt-get install chromium (scripts/setup.sh does)")


def test_html_report_renders_every_figure_in_chromium(small_demo_run, tmp_path):
    _, results = small_demo_run
    index = results / "reports" / "index.html"
    page = index.read_text()
    # Nothing it loads is remote (scripts, images, styles); the citations' DOI links are links, not resources.
    assert not re.search(r"""(src=|<link[^>]*href=)["']https?://""", page), "the report must not need the network"
    assert not re.search(r"""@import|url\(["']?https?://""", page), "the report's styles must not need the network"
    manifest = json.loads((results / "reports" / "figures" / "figures.json").read_text())
    stems = {f["stem"] for f in manifest}
    assert {"fraction_retrieved", "map_vs_p_replicate_retrieval", "compare_cellprofiler_vs_vitmae", "plate_cell_counts",
            "plate_replicate_ap_vitmae", "illumination", "mae_training", "mae_reconstructions", "examples",
            "dino_training", "simclr_training", "compare_vitdino_vs_vitsimclr", "plate_replicate_ap_vitsimclr"} <= stems
    for stem in stems:
        assert (results / "reports" / "figures" / f"{stem}.svg").stat().st_size > 0
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
               f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=180)
    loaded = re.search(r'data-figures-loaded="(\d+)/(\d+)"', dom.stdout)
    assert loaded, f"report script did not run:\n{dom.stderr[-2000:]}"
    assert int(loaded.group(1)) == int(loaded.group(2)) == len(manifest)
    shot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1280,2400", index.as_uri()],
                   capture_output=True, timeout=180, check=True)
    pixels = imread(shot)
    assert pixels.shape[1] == 1280 and np.std(pixels[..., :3]) > 0.05  # rendered content, not a blank page


def test_training_logs_track_replicate_map_for_every_method(small_demo_run):
    """vit.track_every: the log has the tracked replicate mAP at the tracked steps (here the last), per method."""
    import pandas as pd

    _, results = small_demo_run
    for method in ("mae", "dino", "simclr"):
        log = pd.read_csv(results / "vit" / method / "train_log.tsv", sep="\t")
        tracked = log.dropna(subset=["replicate_map"])
        assert tracked["step"].tolist() == [log["step"].max()], method
        assert 0 < tracked["replicate_map"].iloc[0] <= 1


def test_snakemake_report_has_a_category_per_stage(small_demo_run):
    config, results = small_demo_run
    out = results.parent / "snakemake_report.html"
    snakemake(["--report", str(out), "--configfile", config], cwd=results.parent)
    html = out.read_text()
    for category in ("Report", "Figures", "ViT pretraining", "CellProfiler"):
        assert category in html, category


def test_query_puts_the_planted_target_first(small_demo_run):
    _, results = small_demo_run
    done = paintbench("query", "--results-dir", str(results), "--feature-set", "cellprofiler", "--compound", "apatinib")
    assert done.returncode == 0, done.stderr
    assert "CSK" in done.stdout
    ranked = pd.read_csv(results / "reports" / "query" / "apatinib_cellprofiler.tsv", sep="\t")
    assert set(ranked["Metadata_matched_modality"]) == {"crispr", "orf"}
    top = ranked[ranked["rank"] == 1]
    assert list(top["Metadata_gene"]) == ["CSK", "CSK"] and top["annotated_target"].all()
    assert (results / "reports" / "query" / "apatinib_cellprofiler.png").stat().st_size > 0
    # Virtual screening: the compounds annotated to CSK lead the list of compounds like CSK's knockout.
    done = paintbench("query", "--results-dir", str(results), "--feature-set", "cellprofiler", "--gene", "csk")
    assert done.returncode == 0, done.stderr
    screen = pd.read_csv(results / "reports" / "query" / "csk_cellprofiler.tsv", sep="\t")
    crispr = screen[screen["Metadata_matched_modality"] == "crispr"].sort_values("rank")
    n_annotated = int(crispr["annotated_target"].sum())
    assert n_annotated == 2 and crispr["annotated_target"].head(n_annotated).all()


def test_query_unknown_names_suggest_close_matches(small_demo_run):
    _, results = small_demo_run
    done = paintbench("query", "--results-dir", str(results), "--compound", "apatinb")
    assert done.returncode == 3 and "unknown compound 'apatinb'" in done.stderr and "did you mean apatinib" in done.stderr
    done = paintbench("query", "--results-dir", str(results), "--gene", "CKS")
    assert done.returncode == 3 and "did you mean CSK" in done.stderr
    done = paintbench("query", "--results-dir", str(results), "--feature-set", "dino", "--gene", "CSK")
    assert done.returncode == 3 and "feature set 'dino': name one of its chains" in done.stderr


def test_polypharmacology_call_follows_the_planted_target(small_demo_run):
    """The demo plants CPJUMP1's BI-2536 pattern (annotated BRD4 and PLK1, phenotype along PLK1, BRD4 null): every
    call made names PLK1, in each genetic modality some feature set makes it, BRD4 never passes.

    Measured on this small run (54 unrelated pairs per condition: q is at least 0.036): PLK1 ranks first in 14 of 16
    (profile set, modality) pairs; the CRISPR call is made by CellProfiler, DINO (headline chains) and MAE's
    sphering chain, the ORF call by the sphering chains of CellProfiler and DINO."""
    _, results = small_demo_run
    calls = {}
    for path in sorted((results / "target_id").glob("*/*_polypharmacology.parquet")):  # every chain of every set
        name = f"{path.parent.name}/{path.name.removesuffix('_polypharmacology.parquet')}"
        table = pd.read_parquet(path)
        bi2536 = table[table["Metadata_pert_iname"] == "BI-2536"]
        assert set(bi2536["target"]) == {"BRD4", "PLK1"}, name
        assert set(bi2536["Metadata_matched_modality"]) == {"crispr", "orf"}, name
        assert not bi2536.loc[bi2536["target"] == "BRD4", "passes"].any(), name
        calls |= {(name, m): c for m, c in zip(bi2536["Metadata_matched_modality"], bi2536["call"])}
    assert len({name for name, _ in calls}) == 10  # 5 feature sets x 2 chains
    assert set(calls.values()) <= {"PLK1", "none"}, calls
    for modality in ("crispr", "orf"):
        assert any(c == "PLK1" for (fs, m), c in calls.items() if m == modality), calls
    page = (results / "reports" / "index.html").read_text()
    assert re.search(r"<td class='l'>BI-2536</td>.*?<td class='l'><b>PLK1</b></td>", page), "the report shows the call"
    summary = pd.read_csv(results / "reports" / "summary.tsv", sep="\t")
    shortlist = summary[summary["task"] == "target_identification"]
    assert set(shortlist["profile_set"]) == {"cellprofiler/mad_featselect", "cellprofiler/mad_sphering",
                                             *(f"{fs}/{chain}" for fs in FEATURE_SETS[1:] for chain in ("mad", "mad_sphering"))}
    assert set(shortlist["k"]) == {1, 5, 10}
    first = shortlist[shortlist["k"] == 1]
    assert (first["recall_at_k"] > first["random_recall_at_k"]).any()


def test_target_lookup_in_a_real_browser(small_demo_run):
    """Selenium + Debian's chromedriver: type a compound, read the ranked genes back (they match `paintbench query`),
    sort a column, and follow the suggestion offered for a misspelled name."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.ui import WebDriverWait

    from paintbench.report.query import load_run, query

    _, results = small_demo_run
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.fail("Debian's chromium-driver is needed: apt-get install chromium-driver (scripts/setup.sh does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get((results / "reports" / "index.html").as_uri())
        box = driver.find_element(By.ID, "lookup-input")
        box.send_keys("BI-2536", Keys.ENTER)
        WebDriverWait(driver, 30).until(until.presence_of_element_located((By.CSS_SELECTOR, "table.lookup")))
        blocks = driver.find_elements(By.CSS_SELECTOR, "#lookup-results h4")
        label = "A549 compound 24 h -> crispr 144 h"
        assert label in [b.text for b in blocks]
        row_div = driver.find_element(By.XPATH, f"//h4[text()='{label}']/following-sibling::div[1]")
        tables = {t.get_attribute("data-feature-set"): t for t in row_div.find_elements(By.CSS_SELECTOR, "table.lookup")}
        assert set(tables) == set(FEATURE_SETS)

        def rows(table):
            return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in table.find_elements(By.TAG_NAME, "tr")[1:]]

        shown = rows(tables["cellprofiler"])
        profiles, _ = load_run(results, "cellprofiler")
        _, expected = query(profiles, compound="BI-2536")
        expected = expected[expected["Metadata_matched_modality"] == "crispr"].sort_values("rank")
        assert [r[1] for r in shown] == expected["Metadata_gene"].tolist()
        assert [float(r[2]) for r in shown] == pytest.approx(expected["cosine"].round(3).tolist(), abs=1e-3)
        assert [float(r[3]) for r in shown] == pytest.approx(expected["q_value"].tolist(), rel=0.06)
        assert [r[4] == "annotated" for r in shown] == [g in ("PLK1", "BRD4") for g in expected["Metadata_gene"]]
        # A feature set that ranks PLK1 first for BI-2536 (the planted answer; test above) shows it on top.
        poly = {fs: pd.read_parquet(results / "target_id" / f"{HEADLINE[fs]}_polypharmacology.parquet")
                for fs in FEATURE_SETS}
        leaders = [fs for fs, t in poly.items() if ((t["Metadata_pert_iname"] == "BI-2536") & (t["target"] == "PLK1")
                                                    & (t["Metadata_matched_modality"] == "crispr") & (t["rank"] == 1)).any()]
        assert leaders, "no feature set ranks PLK1 first for BI-2536"
        assert rows(tables[leaders[0]])[0][1:5:3] == ["PLK1", "annotated"]
        # Sorting: a click on "cosine" orders the rows by it.
        tables["cellprofiler"].find_element(By.XPATH, ".//th[text()='cosine']").click()
        cosines = [float(r[2]) for r in rows(tables["cellprofiler"])]
        assert cosines == sorted(cosines)
        # A misspelled name gets its suggestion, which looks the right compound up.
        box.clear()
        box.send_keys("BI-2563", Keys.ENTER)
        message = driver.find_element(By.ID, "lookup-message")
        assert "did you mean" in message.text and "BI-2536" in message.text
        assert not driver.find_elements(By.CSS_SELECTOR, "table.lookup")
        message.find_element(By.CSS_SELECTOR, "a.suggestion").click()
        WebDriverWait(driver, 30).until(until.presence_of_element_located((By.CSS_SELECTOR, "table.lookup")))
        assert driver.find_element(By.ID, "lookup-input").get_attribute("value") == "BI-2536"
        # A gene (any case): compounds ranked (virtual screening), BI-2536 marked as annotated to PLK1.
        top = driver.find_element(By.ID, "lookup-top")
        top.clear()
        top.send_keys("50")  # every compound of the condition
        box.clear()
        box.send_keys("plk1", Keys.ENTER)
        WebDriverWait(driver, 30).until(until.text_to_be_present_in_element((By.ID, "lookup-message"), "Compounds ranked"))
        screened = rows(driver.find_element(By.CSS_SELECTOR, "table.lookup[data-feature-set='cellprofiler']"))
        assert [r[4] for r in screened if r[1] == "BI-2536"] == ["annotated"]
        assert {r[1] for r in screened if r[4] == "annotated"} == {"BI-2536"}
    finally:
        driver.quit()
