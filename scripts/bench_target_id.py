"""Target identification at the full batch's scale, and the report's look-up with the full batch embedded.

  python scripts/bench_target_id.py [--features 500] [--feature-sets 4]

tables: the paper's 40 plates (bench_protocols.paper_scale_profiles: real platemaps, 303 compounds x 160 genes per
  condition, planted phenotypes in --features features), in a child process (wall time, peak RSS): shortlists
  (target identification + virtual screening, 10,000 random shortlists per query), polypharmacology calls and the
  look-up's pair table. Reference in the same run: `paintbench query`'s function called once per compound (what a
  user would do without the stage), timed on --query-sample compounds and scaled to all of them.
html: the look-up section with --feature-sets copies of the pair table embedded: file size, and in headless
  Chromium (Selenium, Debian's chromedriver) the page's load time and one look-up's time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_protocols import paper_scale_profiles
from bench_retrieval import measured

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def tables_worker(args: argparse.Namespace, out: Path) -> None:
    from paintbench.atomic import write_table
    from paintbench.report.query import query
    from paintbench.target_id import comparisons, polypharmacology, shortlists, similarity_pairs

    profiles, features = paper_scale_profiles(args.features)
    result: dict[str, float] = {}
    t0 = time.perf_counter()
    compared = comparisons(profiles, features)
    result["comparisons_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary, queries = shortlists(compared, draws=args.draws)
    result["shortlists_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    poly = polypharmacology(compared)
    result["polypharmacology_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = similarity_pairs(compared)
    write_table(pairs, out.with_suffix(".pairs.parquet"))
    result["pairs_s"] = time.perf_counter() - t0
    result.update(conditions=int(summary[["Metadata_cell_type", "Metadata_timepoint", "Metadata_matched_modality",
                                          "Metadata_matched_timepoint"]].drop_duplicates().shape[0]),
                  target_id_queries=int((queries["task"] == "target_identification").sum()),
                  screening_queries=int((queries["task"] == "virtual_screening").sum()),
                  multi_target_rows=len(poly), pairs=len(pairs),
                  compounds=int(pairs["Metadata_broad_sample"].nunique()), genes=int(pairs["Metadata_gene"].nunique()))
    names = profiles.loc[profiles["Metadata_modality"] == "compound", "Metadata_broad_sample"].dropna().unique()
    sample = [n for n in names if n in set(queries["query"])][: args.query_sample]
    t0 = time.perf_counter()
    for name in sample:
        query(profiles, compound=name)
    per_compound = (time.perf_counter() - t0) / len(sample)
    result["query_per_compound_s"] = per_compound
    result["query_all_compounds_s"] = per_compound * result["compounds"]
    out.write_text(json.dumps(result))


def html_part(pairs: Path, n_sets: int, work: Path) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.ui import WebDriverWait

    from paintbench.report.html import STYLE
    from paintbench.report.targets import lookup_html

    sets = [f"set{k}" for k in range(n_sets)]
    for fs in sets:
        (work / "target_id").mkdir(parents=True, exist_ok=True)
        shutil.copy(pairs, work / "target_id" / f"{fs}_pairs.parquet")
    t0 = time.perf_counter()
    section = lookup_html(work, sets)
    build_s = time.perf_counter() - t0
    page = work / "lookup.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{STYLE}</style></head><body>{section}"
                    "</body></html>", encoding="utf-8")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        t0 = time.perf_counter()
        driver.get(page.as_uri())  # returns after the load event: parsing plus the look-up's set-up
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        driver.find_element(By.ID, "lookup-input").send_keys("BI-2536", Keys.ENTER)
        WebDriverWait(driver, 120).until(until.presence_of_element_located((By.CSS_SELECTOR, "table.lookup")))
        lookup_s = time.perf_counter() - t0
        tables = len(driver.find_elements(By.CSS_SELECTOR, "table.lookup"))
    finally:
        driver.quit()
    return {"feature_sets": n_sets, "html_mb": round(page.stat().st_size / 2**20, 1), "build_s": round(build_s, 1),
            "chromium_load_s": round(load_s, 2), "lookup_s": round(lookup_s, 2), "lookup_tables": tables}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=500)
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--feature-sets", type=int, default=4)
    parser.add_argument("--query-sample", type=int, default=10)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        tables_worker(args, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tables.json"
        wall, peak = measured([sys.executable, __file__, "--worker", "--features", str(args.features), "--draws",
                               str(args.draws), "--query-sample", str(args.query_sample), "--out", str(out)])
        row = {"part": "tables", "wall_s": round(wall, 1), "peak_rss_mb": round(peak),
               **{k: round(v, 2) if isinstance(v, float) else v for k, v in json.loads(out.read_text()).items()}}
        row["query_loop_over_stage"] = round(row["query_all_compounds_s"] / row["shortlists_s"], 1)
        print(json.dumps(row), flush=True)
        print(json.dumps({"part": "html", **html_part(out.with_suffix(".pairs.parquet"), args.feature_sets,
                                                      Path(tmp) / "html")}), flush=True)


if __name__ == "__main__":
    main()
