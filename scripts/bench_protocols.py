"""The benchmark at the paper's scale, and what the choice of significance protocol changes.

  python scripts/bench_protocols.py --part scale        # the three tasks on the paper's plate set, both protocols
  python scripts/bench_protocols.py --part calibration  # LINCS plate: power, null rate, the tie rule
  python scripts/bench_protocols.py                     # both

scale: the paper's 40 benchmark plates (12 conditions, 4 plates x 384 wells; ORF 2), real platemaps, planted
  phenotypes mixed into --features features; replicate retrieval, sister matching and compound-gene matching under
  each protocol, each run in its own process (wall time, peak RSS). copairs 0.5.5 computes what it can of the same
  quantities in the same run: replicate retrieval's APs, its mAP-level p-values (the copairs protocol) and per-query
  p-values (copairs.compute.p_values; geometric mean per perturbation = the cpjump1 protocol).
calibration: the real LINCS plate (tests/data): fraction of compounds retrieved under each protocol; the same with
  compound labels shuffled among treated wells (null data: how often nothing is called something); and the tie
  rule: our copairs-protocol p (null >= observed) against copairs' own (null > observed) on these long lists.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench_retrieval import LINCS, PERT, PLATE, measured

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PLATEMAPS = ["JUMP-Target-1_compound_platemap", "JUMP-Target-1_crispr_platemap", "JUMP-Target-1_orf_platemap"]


def paper_scale_profiles(n_features: int, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    from paintbench.metadata import paper_plates, plate_layout
    from paintbench.synthetic import PARAMETERS, ground_truth

    truth = ground_truth(PLATEMAPS, seed=7, strong_fraction=0.4, null_fraction=0.3)
    effects = truth.set_index(["Metadata_modality", "Metadata_broad_sample"])[[f"effect_{p}" for p in PARAMETERS]]
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(len(PARAMETERS), n_features)) / np.sqrt(len(PARAMETERS))
    tables = []
    for plate in paper_plates():
        layout = plate_layout(plate)
        effect = effects.reindex(list(zip(layout["Metadata_modality"], layout["Metadata_broad_sample"]))).fillna(0)
        values = (effect.to_numpy() + rng.normal(0, 0.3, effect.shape)) @ mixing
        values += rng.normal(0, 0.5, values.shape)
        tables.append(pd.concat([layout.reset_index(drop=True), pd.DataFrame(values).add_prefix("f")], axis=1))
    profiles = pd.concat(tables, ignore_index=True)
    return profiles, [c for c in profiles.columns if not c.startswith("Metadata_")]


def scale_worker(engine: str, args: argparse.Namespace, out: Path) -> None:
    profiles, features = paper_scale_profiles(args.features)
    start = time.perf_counter()
    result: dict[str, float] = {}
    if engine.startswith("ours-"):
        from paintbench.retrieval import run_task

        protocol = engine.split("-", 1)[1]
        replicate = None
        for task in ("replicate_retrieval", "sister_matching", "compound_gene_matching"):
            t0 = time.perf_counter()
            _, scored = run_task(task, profiles, features, protocol, args.null_size, 0, replicate)
            if task == "replicate_retrieval":
                replicate = scored
                result["replicate_fraction_retrieved"] = float(scored["below_corrected_p"].mean())
            result[f"{task}_s"] = time.perf_counter() - t0
            result[f"{task}_units"] = len(scored)
    else:  # copairs: replicate retrieval per condition, both statistics
        import copairs.map as cm
        from copairs.compute import p_values
        from statsmodels.stats.multitest import multipletests

        retrieved = []
        with tempfile.TemporaryDirectory() as cache:
            for _, sub in profiles.groupby(["Metadata_cell_type", "Metadata_modality", "Metadata_timepoint"]):
                sub = sub[sub["Metadata_control_type"].ne("empty")].reset_index(drop=True)
                negcon = sub["Metadata_control_type"].eq("negcon")
                meta = sub[[PERT, PLATE]].assign(negcon=negcon.to_numpy(), ref=np.where(negcon, np.arange(len(sub)), -1))
                ap = cm.average_precision(meta, sub[features].to_numpy(), pos_sameby=[PERT, "ref"], pos_diffby=[],
                                          neg_sameby=[PLATE], neg_diffby=["negcon"], progress_bar=False)
                ap = ap[(ap["n_pos_pairs"] > 0) & ~ap["negcon"]]
                cm.mean_average_precision(ap, [PERT], null_size=args.null_size, threshold=0.05, seed=0,
                                          progress_bar=False, cache_dir=cache)
                p = p_values(ap["average_precision"].to_numpy(), ap[["n_pos_pairs", "n_total_pairs"]].to_numpy(),
                             args.null_size, seed=0, progress_bar=False)
                geometric = 10.0 ** -ap.assign(_lp=-np.log10(p)).groupby(PERT)["_lp"].mean()
                retrieved.append(multipletests(geometric.to_numpy(), method="fdr_bh")[1] < 0.05)
        result["replicate_fraction_retrieved"] = float(np.mean(np.concatenate(retrieved)))
        result["replicate_retrieval_s"] = time.perf_counter() - start
    result["total_s"] = time.perf_counter() - start
    out.write_text(json.dumps(result))


def scale(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engines = ["ours-cpjump1", "ours-copairs"] + ([] if args.skip_copairs else ["copairs"])
        for engine in engines:
            out = Path(tmp) / f"{engine}.json"
            wall, peak = measured([sys.executable, __file__, "--worker", engine, "--features", str(args.features),
                                   "--null-size", str(args.null_size), "--out", str(out)])
            row = {"part": "scale", "engine": engine, "wall_s": round(wall, 1), "peak_rss_mb": round(peak),
                   **{k: round(v, 3) for k, v in json.loads(out.read_text()).items()}}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if not args.skip_copairs:
        ratio = rows[-1]["replicate_retrieval_s"] / rows[0]["replicate_retrieval_s"]
        print(json.dumps({"part": "scale", "copairs_over_ours_replicate_retrieval": round(ratio, 1)}), flush=True)
    return rows


def calibration(args: argparse.Namespace) -> list[dict]:
    import copairs.map as cm
    from copairs.matching import assign_reference_index

    from paintbench.metrics import retrieval_ap
    from paintbench.significance import PROTOCOLS, score_groups

    df = pd.read_csv(LINCS)
    features = [c for c in df.columns if not c.startswith("Metadata_")]
    control = df[PERT].eq("DMSO").to_numpy()

    def replicate(table: pd.DataFrame) -> pd.DataFrame:
        ap = retrieval_ap(table, features, query_mask=~control, pos_same=[PERT], neg_mask=control, neg_same=[PLATE])
        return ap[ap["n_pos_pairs"] > 0]

    ap = replicate(df)
    row = {"part": "calibration", "problem": "LINCS plate, replicate retrieval", "null_size": args.null_size}
    for protocol in PROTOCOLS:
        row[f"{protocol}_fraction_retrieved"] = round(float(score_groups(ap, PERT, protocol, args.null_size, 0)
                                                            ["below_corrected_p"].mean()), 3)
    rng = np.random.default_rng(0)
    shuffled_rates = {p: [] for p in PROTOCOLS}
    for _ in range(args.shuffles):
        shuffled = df.copy()
        shuffled.loc[~control, PERT] = rng.permutation(shuffled.loc[~control, PERT].to_numpy())
        null_ap = replicate(shuffled)
        for protocol in PROTOCOLS:
            scored = score_groups(null_ap, PERT, protocol, args.null_size, 0)
            shuffled_rates[protocol].append((scored["below_p"].mean(), scored["below_corrected_p"].mean()))
    for protocol, values in shuffled_rates.items():
        row[f"{protocol}_shuffled_below_p"] = round(float(np.mean([v[0] for v in values])), 4)
        row[f"{protocol}_shuffled_below_q"] = round(float(np.mean([v[1] for v in values])), 4)
    # The tie rule on long lists: copairs 0.5 counts null > observed, we count null >= observed.
    meta = assign_reference_index(df[[PERT, PLATE]].assign(row_id=np.arange(len(df))), f"{PERT} == 'DMSO'")
    ref_ap = cm.average_precision(meta, df[features].to_numpy(), pos_sameby=[PERT, "Metadata_Reference_Index"],
                                  pos_diffby=[], neg_sameby=[PLATE], neg_diffby=[PERT, "Metadata_Reference_Index"],
                                  progress_bar=False)
    with tempfile.TemporaryDirectory() as cache:
        theirs = cm.mean_average_precision(ref_ap[ref_ap["n_pos_pairs"] > 0], [PERT], null_size=args.null_size,
                                           threshold=0.05, seed=0, progress_bar=False, cache_dir=cache)
    ours = score_groups(ap, PERT, "copairs", args.null_size, 0).merge(theirs, on=PERT, suffixes=("", "_copairs"))
    noise = 4 * np.sqrt(ours["p_value_copairs"] * (1 - ours["p_value_copairs"]) / args.null_size) + 1 / args.null_size
    row["tie_rule_max_p_diff_over_mc_noise"] = round(float(np.max(np.abs(ours["p_value"] - ours["p_value_copairs"]) / noise)), 3)
    row["tie_rule_retrieved_ours_vs_copairs"] = [int(ours["below_corrected_p"].sum()),
                                                 int(ours["below_corrected_p_copairs"].sum())]
    print(json.dumps(row), flush=True)
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["scale", "calibration", "both"], default="both")
    parser.add_argument("--features", type=int, default=500)
    parser.add_argument("--null-size", type=int, default=100_000)
    parser.add_argument("--shuffles", type=int, default=20)
    parser.add_argument("--skip-copairs", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return scale_worker(args.worker, args, args.out)
    rows = []
    if args.part in ("scale", "both"):
        rows += scale(args)
    if args.part in ("calibration", "both"):
        rows += calibration(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
