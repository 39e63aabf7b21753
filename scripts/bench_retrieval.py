"""Retrieval engine speed and memory: paintbench.metrics against copairs 0.5.5, same inputs, same run
(the copairs protocol, the quantity copairs computes; scripts/bench_protocols.py measures the tasks and protocols).

Each engine runs in its own subprocess (peak RSS from os.wait4's ru_maxrss, so one engine's memory
never counts against the other); the parent compares their APs per query, mAPs and p-values.

Problems:
  lincs  the LINCS plate in tests/data (384 wells x 421 features): replicate retrieval of each
         compound's wells against the plate's DMSO wells.
  jump   synthetic JUMP scale: --perturbations x 4 replicates + --controls controls, 500 features;
         replicate retrieval with every non-replicate profile as a negative.

  python scripts/bench_retrieval.py                          # both problems, both engines
  python scripts/bench_retrieval.py --problem jump --skip-copairs
  python scripts/bench_retrieval.py --problem jump --perturbations 1000 --controls 1000   # smaller
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
LINCS = ROOT / "tests/data/lincs_plate/SQ00015054_normalized_feature_select.csv.gz"
PERT, PLATE = "Metadata_broad_sample", "Metadata_Plate"


def load_problem(name: str, perturbations: int, controls: int) -> tuple[pd.DataFrame, list[str], dict]:
    """Profiles, feature columns and the pair rules (ours; the copairs worker translates them)."""
    if name == "lincs":
        df = pd.read_csv(LINCS)
        features = [c for c in df.columns if not c.startswith("Metadata_")]
        return df, features, {"negatives": "plate_controls"}
    rng = np.random.default_rng(0)
    n_feat, reps = 500, 4
    effect = rng.standard_normal((perturbations, n_feat)) * rng.uniform(0, 0.6, (perturbations, 1))
    x = np.concatenate([np.repeat(effect, reps, axis=0), np.zeros((controls, n_feat))])
    x += rng.standard_normal(x.shape)
    names = [f"BRD-{i:05d}" for i in range(perturbations)]
    meta = pd.DataFrame({PERT: np.repeat(names, reps).tolist() + ["DMSO"] * controls, PLATE: "P1"})
    features = [f"f{i:03d}" for i in range(n_feat)]
    return pd.concat([meta, pd.DataFrame(x, columns=features)], axis=1), features, {"negatives": "all_others"}


def worker(engine: str, args: argparse.Namespace, out: Path) -> None:
    df, features, rules = load_problem(args.problem, args.perturbations, args.controls)
    df = pd.concat([df, pd.Series(np.arange(len(df)), index=df.index, name="row_id")], axis=1)
    control = (df[PERT] == "DMSO").to_numpy()
    import statsmodels.stats.multitest  # noqa: F401  (imported by copairs itself: keep it out of the timings)

    t0 = time.perf_counter()
    if engine == "ours":
        from paintbench import metrics
        from paintbench.significance import score_groups

        plate_controls = rules["negatives"] == "plate_controls"
        neg = dict(neg_mask=control, neg_same=[PLATE]) if plate_controls else dict(neg_diff=[PERT])
        ap = metrics.retrieval_ap(df, features, query_mask=~control, pos_same=[PERT], **neg)
        ap = ap[ap["n_pos_pairs"] > 0]
        t1 = time.perf_counter()
        maps = score_groups(ap, PERT, "copairs", null_size=args.null_size, seed=0)
    else:
        import copairs.map as cm
        from copairs.matching import assign_reference_index

        # Controls get distinct reference indices so they are never each other's positives.
        meta = assign_reference_index(df[[PERT, PLATE, "row_id"]], f"{PERT} == 'DMSO'")
        ref = "Metadata_Reference_Index"
        if rules["negatives"] == "plate_controls":
            neg = dict(neg_sameby=[PLATE], neg_diffby=[PERT, ref])
        else:
            neg = dict(neg_sameby=[], neg_diffby=[PERT])
        ap = cm.average_precision(
            meta, df[features].to_numpy(), pos_sameby=[PERT, ref], pos_diffby=[], progress_bar=False, **neg
        )
        ap = ap[ap["n_pos_pairs"] > 0]
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as cache:  # no reuse of ~/.copairs nulls between runs
            maps = cm.mean_average_precision(
                ap, [PERT], null_size=args.null_size, threshold=0.05, seed=0, progress_bar=False, cache_dir=cache
            )
    t2 = time.perf_counter()
    ap = ap.sort_values("row_id")
    np.savez(
        out,
        row_id=ap["row_id"].to_numpy(),
        ap=ap["average_precision"].to_numpy(np.float64),
        group=maps[PERT].to_numpy(str),
        map=maps["mean_average_precision"].to_numpy(np.float64),
        p=maps["p_value"].to_numpy(np.float64),
        q=maps["corrected_p_value"].to_numpy(np.float64),
        times=np.array([t1 - t0, t2 - t1]),
    )


def measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a child process; a failing child stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({status})")
    return time.perf_counter() - start, usage.ru_maxrss / 1024  # Linux: KiB


def run_engine(engine: str, args: argparse.Namespace, tmp: Path) -> dict:
    out = tmp / f"{args.problem}_{engine}.npz"
    cmd = [sys.executable, __file__, "--worker", engine, "--problem", args.problem, "--null-size", str(args.null_size),
           "--perturbations", str(args.perturbations), "--controls", str(args.controls), "--out", str(out)]
    wall, peak = measured(cmd)
    r = dict(np.load(out))
    r.update(engine=engine, wall_s=wall, peak_rss_mb=peak)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=["lincs", "jump", "both"], default="both")
    ap.add_argument("--skip-copairs", action="store_true")
    ap.add_argument("--null-size", type=int, default=10_000)
    ap.add_argument("--perturbations", type=int, default=3000)
    ap.add_argument("--controls", type=int, default=3000)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--worker", choices=["ours", "copairs"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args, args.out)
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        for problem in ["lincs", "jump"] if args.problem == "both" else [args.problem]:
            args.problem = problem
            runs = [run_engine(e, args, Path(tmp)) for e in (["ours"] if args.skip_copairs else ["ours", "copairs"])]
            row = {"problem": problem, "queries": int(runs[0]["row_id"].size), "groups": int(runs[0]["group"].size),
                   "null_size": args.null_size}
            for r in runs:
                e = r["engine"]
                row.update({f"{e}_wall_s": round(r["wall_s"], 2), f"{e}_ap_s": round(float(r["times"][0]), 2),
                            f"{e}_map_s": round(float(r["times"][1]), 2), f"{e}_peak_rss_mb": round(r["peak_rss_mb"]),
                            f"{e}_fraction_retrieved": float(np.mean(r["q"] < 0.05))})
            if len(runs) == 2:
                ours, ref = runs
                assert np.array_equal(ours["row_id"], ref["row_id"]) and np.array_equal(ours["group"], ref["group"])
                row.update(
                    speedup_wall=round(ref["wall_s"] / ours["wall_s"], 1),
                    speedup_ap_plus_map=round(ref["times"].sum() / ours["times"].sum(), 1),
                    max_abs_ap_diff=float(np.max(np.abs(ours["ap"] - ref["ap"]))),
                    max_abs_map_diff=float(np.max(np.abs(ours["map"] - ref["map"]))),
                    max_abs_p_diff=float(np.max(np.abs(ours["p"] - ref["p"]))),
                    # Monte Carlo error of two independent nulls: <= 1 means within 4 sd (+1/N)
                    max_p_diff_over_mc_tol=round(float(np.max(np.abs(ours["p"] - ref["p"]) / (
                        4 * np.sqrt(ref["p"] * (1 - ref["p"]) / args.null_size) + 1 / args.null_size))), 3),
                    groups_q_status_differs=int(np.sum((ours["q"] < 0.05) != (ref["q"] < 0.05))),
                )
            print(json.dumps(row), flush=True)
            report.append(row)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
