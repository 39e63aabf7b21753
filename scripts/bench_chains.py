"""Profile chains at the paper's scale: time and peak memory of each step against pycytominer's function for the
same step, in the same run, and of the whole bake-off (every feature set under every chain, then its layout
controls and the paired comparisons).

The problem: synthetic well profiles shaped like the paper's benchmark (40 plates x 384 wells, 64 negative-control
wells per plate, 500 features, one layout shared by every plate as CPJUMP1's replicate plates share one; 4 feature
sets that differ in noise). Each measurement runs in its own subprocess (peak RSS from os.wait4's ru_maxrss, so one
never counts against another), the input read from one Parquet file.

Steps with a pycytominer counterpart are measured side by side (ratio = pycytominer time / ours):
  mad         per plate: pycytominer.normalize(method="mad_robustize", samples=negcon), plate by plate
  standardize per plate: pycytominer.normalize(method="standardize", samples=negcon), plate by plate
  sphering    pooled controls: pycytominer.normalize(method="spherize", ZCA-cor, epsilon 1e-2); ours at 1e-2 and
              with the label-free auto regularization (25 values, leave one plate out)
  var         pycytominer.feature_select(variance_threshold [+ frequency_threshold])
  featselect  pycytominer.feature_select(variance, correlation 0.9, drop NA columns, blocklist)
The others (int, wellpos, cc, outlier, pca, harmony) have no pycytominer function and are timed alone.

  python scripts/bench_chains.py                          # every step, then the bake-off
  python scripts/bench_chains.py --part steps --plates 10  # smaller
  python scripts/bench_chains.py --part bakeoff --null-size 10000
  python scripts/bench_chains.py --part lincs              # what each chain retrieves on the real LINCS plate

--part lincs is not about speed: on the real LINCS plate of tests/data (one A549 plate, 24 DMSO wells, 58
compounds at up to 6 doses), each candidate chain's replicate retrieval (compounds against the plate's DMSO wells,
the paper's protocol) beside the same retrieval on label-shuffled wells over --shuffles seeds: what a chain
retrieves there is its false-discovery rate (docs/methods.md chooses the default chains from this table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
NEGCON = "negcon"
NEGCON_QUERY = "Metadata_control_type == 'negcon'"
PYCYTOMINER_STEPS = {"mad", "standardize", "sphering", "var", "featselect"}
OUR_STEPS = ["mad", "standardize", "sphering", "sphering_auto", "var", "featselect", "int", "wellpos", "cc",
             "outlier", "pca", "harmony"]
BAKEOFF_CHAINS = {"mad_featselect": ["mad", "featselect"], "mad_sphering": ["mad", "sphering"],
                  "wellpos_mad": ["wellpos", "mad"]}
LINCS = ROOT / "tests/data/lincs_plate/SQ00015054_normalized_feature_select.csv.gz"
LINCS_CHAINS = {"none": ["none"], "mad": ["mad"], "mad_featselect": ["mad", "featselect"],
                "standardize": ["standardize"], "mad_int": ["mad", "int"], "mad_outlier": ["mad", "outlier"],
                "mad_sphering": ["mad", "sphering"], "mad_sphering_1e-2": ["mad", "sphering"],
                "mad_pca_sphering": ["mad", "pca", "sphering"]}


def synthetic_profiles(plates: int, features: int, noise: float, seed: int = 0) -> pd.DataFrame:
    """One feature set's wells: a shared layout of 64 DMSO wells and 320 compound wells (each compound once per
    plate, so a compound's replicates sit in one position on every plate), a per-plate offset, a position effect,
    and correlated features (a 20-factor structure), as CellProfiler features have."""
    from paintbench.layout import all_wells

    rng = np.random.default_rng(seed)
    wells = all_wells(384)
    controls = set(rng.choice(len(wells), 64, replace=False).tolist())
    compound = np.array(["DMSO" if i in controls else f"BRD-{i:04d}" for i in range(len(wells))])
    effects = {name: rng.normal(0, rng.uniform(0, 1.0), features) for name in set(compound) - {"DMSO"}}
    loadings = rng.normal(0, 1, (20, features))
    position = rng.normal(0, 0.3, (len(wells), features))
    blocks = []
    for p in range(plates):
        signal = np.stack([effects.get(c, np.zeros(features)) for c in compound])
        values = (signal + position + rng.normal(0, 0.5, features) + rng.normal(0, 1, (len(wells), 20)) @ loadings
                  * 0.3 + noise * rng.normal(0, 1, (len(wells), features)))
        meta = pd.DataFrame({"Metadata_Plate": f"P{p:03d}", "Metadata_Well": wells, "Metadata_broad_sample": compound,
                             "Metadata_control_type": np.where(compound == "DMSO", NEGCON, None),
                             "Metadata_pert_type": np.where(compound == "DMSO", "control", "trt"),
                             "Metadata_modality": "compound", "Metadata_cell_type": "A549", "Metadata_timepoint": 24,
                             "Metadata_plate_group": "benchmark",
                             "Metadata_Object_Count": rng.integers(50, 400, len(wells))})
        blocks.append(pd.concat([meta, pd.DataFrame(values + 5.0, columns=[f"Cells_F{i:03d}" for i in range(features)])],
                                axis=1))
    return pd.concat(blocks, ignore_index=True)


# ------------------------------------------------------------------------------------------------ workers
def run_ours(step: str, table: pd.DataFrame) -> int:
    from paintbench.chains import apply_chain

    name, options = step, {}
    if step == "sphering":
        options = {"sphering": {"regularization": 0.01}}
    elif step == "sphering_auto":
        name, options = "sphering", {"sphering": {"regularization": "auto"}}
    _, features, _ = apply_chain(table, [name], options)
    return len(features)


def run_pycytominer(step: str, table: pd.DataFrame) -> int:
    from pycytominer import feature_select, normalize

    from paintbench.chains import variance_operations
    from paintbench.profiles import SELECTION_OPERATIONS

    features = [c for c in table.columns if not c.startswith("Metadata_")]
    meta = [c for c in table.columns if c.startswith("Metadata_")]
    if step in ("mad", "standardize"):
        method = "mad_robustize" if step == "mad" else "standardize"
        out = pd.concat([normalize(block, features=features, meta_features=meta, samples=NEGCON_QUERY, method=method)
                         for _, block in table.groupby("Metadata_Plate")])
    elif step == "sphering":
        out = normalize(table, features=features, meta_features=meta, samples=NEGCON_QUERY, method="spherize",
                        spherize_method="ZCA-cor", spherize_epsilon=0.01, spherize_center=True)
    else:
        operations = variance_operations() if step == "var" else SELECTION_OPERATIONS
        out = feature_select(table, features=features, operation=operations)
    return len([c for c in out.columns if not c.startswith("Metadata_")])


def run_bakeoff(tables: list[Path], null_size: int) -> dict:
    """Every feature set under every chain: the chain, replicate retrieval and the layout controls of each profile
    set, then the paired comparisons of the profile sets."""
    from paintbench.chains import apply_chain
    from paintbench.comparison import paired_comparisons
    from paintbench.controls import layout_controls
    from paintbench.retrieval import run_task, scorable_features

    timings: dict[str, float] = {"chains": 0.0, "replicate_retrieval": 0.0, "layout_controls": 0.0}
    results = {}
    for path in tables:
        annotated = pd.read_parquet(path)
        for chain, steps in BAKEOFF_CHAINS.items():
            t0 = time.perf_counter()
            scored, _, _ = apply_chain(annotated, steps, {"sphering": {"regularization": "auto"}})
            t1 = time.perf_counter()
            features = scorable_features(scored)
            _, per_unit = run_task("replicate_retrieval", scored, features, "cpjump1", null_size, 0)
            t2 = time.perf_counter()
            layout_controls(scored, features, "cpjump1", null_size, 0, 200, permutations=50)
            t3 = time.perf_counter()
            timings["chains"] += t1 - t0
            timings["replicate_retrieval"] += t2 - t1
            timings["layout_controls"] += t3 - t2
            results[f"{path.stem}/{chain}"] = per_unit
    t0 = time.perf_counter()
    paired = paired_comparisons(results, "replicate_retrieval")
    timings["paired_comparisons"] = time.perf_counter() - t0
    return {**{f"{k}_s": round(v, 2) for k, v in timings.items()}, "profile_sets": len(results),
            "comparisons": len(paired)}


def lincs_quality(null_size: int, shuffles: int) -> list[dict]:
    """Per candidate chain on the LINCS plate: replicate retrieval, and the same on label-shuffled wells."""
    from paintbench.chains import apply_chain
    from paintbench.controls import shuffled_replicates
    from paintbench.retrieval import run_task, scorable_features, user_profiles

    raw = pd.read_csv(LINCS)
    profiles = user_profiles(raw, control_col=None, control_value="DMSO", labels_col="Metadata_target")
    profiles = profiles.assign(Metadata_modality="compound")
    rows = []
    for name, steps in LINCS_CHAINS.items():
        options = {"sphering": {"regularization": 0.01 if name.endswith("1e-2") else "auto"}}
        scored, features, records = apply_chain(profiles, steps, options)
        features = scorable_features(scored)
        _, per_unit = run_task("replicate_retrieval", scored, features, "cpjump1", null_size, 0)
        nulls = pd.concat([shuffled_replicates(scored, features, "cpjump1", null_size, seed) for seed in range(shuffles)])
        rows.append({"part": "lincs", "chain": name, "steps": "+".join(steps), "features": len(features),
                     "detail": "; ".join(records["detail"]), "n": len(per_unit),
                     "map": round(float(per_unit["mean_average_precision"].mean()), 3),
                     "fraction_retrieved": round(float(per_unit["below_corrected_p"].mean()), 3),
                     "shuffled_map": round(float(nulls["mean_average_precision"].mean()), 3),
                     "shuffled_fraction_retrieved": round(float(nulls["fraction_retrieved"].mean()), 4),
                     "shuffled_max_fraction_retrieved": round(float(nulls["fraction_retrieved"].max()), 4),
                     "shuffles": shuffles})
    return rows


def worker(args: argparse.Namespace) -> None:
    if args.worker == "bakeoff":
        result = run_bakeoff([Path(p) for p in args.inputs], args.null_size)
    else:
        table = pd.read_parquet(args.inputs[0])
        import harmonypy, pycytominer, scipy.stats, sklearn.decomposition  # noqa: F401,E401  (imports are not timed)

        t0 = time.perf_counter()
        kept = (run_ours if args.worker == "ours" else run_pycytominer)(args.step, table)
        result = {"seconds": time.perf_counter() - t0, "features_out": kept}
    Path(args.out).write_text(json.dumps(result))


def measured(cmd: list[str], out: Path) -> dict:
    """The worker's result with its process's wall seconds and peak RSS (MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[2:6])} ... failed ({status})")
    return {**json.loads(out.read_text()), "wall_s": time.perf_counter() - start, "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["steps", "bakeoff", "both", "lincs"], default="both")
    parser.add_argument("--shuffles", type=int, default=10, help="--part lincs: label shuffles per chain")
    parser.add_argument("--plates", type=int, default=40)
    parser.add_argument("--features", type=int, default=500)
    parser.add_argument("--feature-sets", type=int, default=4)
    parser.add_argument("--null-size", type=int, default=10_000)
    parser.add_argument("--steps", nargs="+", default=OUR_STEPS, choices=OUR_STEPS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", choices=["ours", "pycytominer", "bakeoff"], help=argparse.SUPPRESS)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    report = []
    if args.part == "lincs":
        for row in lincs_quality(args.null_size, args.shuffles):
            print(json.dumps(row), flush=True)
            report.append(row)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        return
    with tempfile.TemporaryDirectory() as tmp:
        inputs = []
        for i in range(args.feature_sets if args.part != "steps" else 1):
            path = Path(tmp) / f"fs{i}.parquet"
            synthetic_profiles(args.plates, args.features, noise=0.5 + 0.5 * i, seed=i).to_parquet(path)
            inputs.append(path)
        out = Path(tmp) / "result.json"
        base = [sys.executable, __file__, "--out", str(out)]
        if args.part in ("steps", "both"):
            for step in args.steps:
                row = {"part": "step", "step": step, "wells": args.plates * 384, "features": args.features}
                engines = ["ours", "pycytominer"] if step in PYCYTOMINER_STEPS else ["ours"]
                for engine in engines:
                    r = measured([*base, "--worker", engine, "--step", step, "--inputs", str(inputs[0])], out)
                    row.update({f"{engine}_s": round(r["seconds"], 2), f"{engine}_peak_rss_mb": round(r["peak_rss_mb"]),
                                f"{engine}_features_out": r["features_out"]})
                if len(engines) == 2:
                    row["ratio_pycytominer_over_ours"] = round(row["pycytominer_s"] / max(row["ours_s"], 1e-3), 2)
                print(json.dumps(row), flush=True)
                report.append(row)
        if args.part in ("bakeoff", "both"):
            r = measured([*base, "--worker", "bakeoff", "--null-size", str(args.null_size), "--inputs",
                          *map(str, inputs)], out)
            row = {"part": "bakeoff", "wells_per_feature_set": args.plates * 384, "features": args.features,
                   "feature_sets": len(inputs), "chains": len(BAKEOFF_CHAINS), "null_size": args.null_size,
                   **{k: v for k, v in r.items() if k not in ("wall_s", "peak_rss_mb")},
                   "wall_s": round(r["wall_s"], 1), "peak_rss_mb": round(r["peak_rss_mb"])}
            print(json.dumps(row), flush=True)
            report.append(row)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
