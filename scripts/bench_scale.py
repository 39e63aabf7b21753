"""JUMP scale on one machine: time and peak memory of the benchmark's tasks on synthetic JUMP-like plates, against
copairs in the same run where copairs finishes.

Plates as cpg0016's: 384 wells, 64 negative-control (DMSO) wells, 320 compounds, each compound on 5 plates (one
condition), 500 float32 features; compound effects of random direction and strength on unit noise. Matching runs on
consensus profiles as the tasks do, sized as JUMP's at 1,700 plates (108,800 compounds, 15,000 genetic reagents of
7,500 genes) and in proportion below; each compound targets 1-2 genes.

Each measurement runs in its own process (peak RSS from os.wait4), copairs with a time and memory limit: where it
stops is recorded, not waited for.

  python scripts/bench_scale.py --plates 20 200 1700                    # replicate retrieval, paintbench and copairs
  python scripts/bench_scale.py --plates 20 200 --tasks sister compound_gene
  python scripts/bench_scale.py --plates 1700 --tasks replicate --precision float64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

PERT, PLATE, TARGETS, GENE = "Metadata_broad_sample", "Metadata_Plate", "Metadata_target_list", "Metadata_gene"
WELLS, CONTROLS, REPLICATES = 384, 64, 5
JUMP_PLATES, JUMP_REAGENTS = 1700, 15_000
TASKS = ["replicate", "copairs", "sister", "compound_gene", "target_id"]


def jump_like_plates(n_plates: int, n_features: int = 500, seed: int = 0,
                     dtype: type = np.float32) -> tuple[pd.DataFrame, list[str]]:
    """Well profiles of `n_plates` (a multiple of 5) JUMP-like plates: each set of 5 plates shares its 320
    compounds, one well each per plate, positions shuffled per plate."""
    if n_plates % REPLICATES:
        raise ValueError(f"--plates: {n_plates} is not a multiple of {REPLICATES}")
    rng = np.random.default_rng(seed)
    treated = WELLS - CONTROLS
    n_compounds = treated * n_plates // REPLICATES
    values = rng.standard_normal((n_plates * WELLS, n_features), dtype=np.float32)
    perts = np.empty(n_plates * WELLS, dtype=object)
    for first in range(0, n_plates, REPLICATES):
        compounds = np.arange(first // REPLICATES * treated, (first // REPLICATES + 1) * treated)
        effect = rng.standard_normal((treated, n_features), dtype=np.float32)
        effect *= rng.uniform(0, 0.4, (treated, 1)).astype(np.float32)
        for plate in range(first, first + REPLICATES):
            layout = rng.permutation(WELLS)  # the first 64 positions of the permutation hold the controls
            rows = plate * WELLS + layout
            perts[rows[:CONTROLS]] = "DMSO"
            perts[rows[CONTROLS:]] = [f"JCP2022_{c:06d}" for c in compounds]
            values[rows[CONTROLS:]] += effect
    features = [f"f{k:03d}" for k in range(n_features)]
    table = pd.DataFrame(values.astype(dtype, copy=False), columns=features, copy=False)
    control = perts == "DMSO"
    plates = np.repeat([f"JUMP{p:05d}" for p in range(n_plates)], WELLS)
    rows_cols = [f"{chr(65 + w // 24)}{w % 24 + 1:02d}" for w in range(WELLS)]
    table.insert(0, PLATE, plates)
    table.insert(1, "Metadata_Well", np.tile(rows_cols, n_plates))
    table.insert(2, PERT, perts)
    table.insert(3, "Metadata_control_type", np.where(control, "negcon", None))
    table.insert(4, "Metadata_pert_type", np.where(control, "control", "trt"))
    table.insert(5, "Metadata_modality", "compound")
    assert n_compounds == (~control).sum() // REPLICATES
    return table, features


def consensus_tables(n_plates: int, n_features: int = 500, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(compound consensus with 1-2 targets each, genetic reagent consensus with their gene), sized as JUMP's
    at n_plates: 64 compounds per plate, 15,000 reagents (2 per gene) at 1,700 plates."""
    rng = np.random.default_rng(seed + 1)
    n_compounds = (WELLS - CONTROLS) * n_plates // REPLICATES
    n_genes = max(4, JUMP_REAGENTS * n_plates // JUMP_PLATES // 2)
    direction = rng.standard_normal((n_genes, n_features), dtype=np.float32)
    first = rng.integers(0, n_genes, n_compounds)
    second = np.where(rng.random(n_compounds) < 0.3, rng.integers(0, n_genes, n_compounds), first)
    compound_x = direction[first] * 0.5 + rng.standard_normal((n_compounds, n_features), dtype=np.float32)
    gene_of = np.repeat(np.arange(n_genes), 2)
    reagent_x = direction[gene_of] * 0.5 + rng.standard_normal((len(gene_of), n_features), dtype=np.float32)
    features = [f"f{k:03d}" for k in range(n_features)]
    names = np.array([f"G{g:05d}" for g in range(n_genes)], dtype=object)
    compounds = pd.DataFrame(compound_x, columns=features, copy=False)
    compounds.insert(0, PERT, [f"JCP2022_{c:06d}" for c in range(n_compounds)])
    compounds.insert(1, "Metadata_modality", "compound")
    compounds.insert(2, TARGETS, ["|".join(sorted({names[a], names[b]})) for a, b in zip(first, second)])
    reagents = pd.DataFrame(reagent_x, columns=features, copy=False)
    reagents.insert(0, PERT, [f"CRISPR_{r:06d}" for r in range(len(gene_of))])
    reagents.insert(1, "Metadata_modality", "crispr")
    reagents.insert(2, TARGETS, names[gene_of])
    reagents.insert(3, GENE, names[gene_of])
    return compounds, reagents, features


def run_worker(task: str, plates: int, precision: str, null_size: int, out: Path) -> None:
    from paintbench import retrieval
    from paintbench.metrics import retrieval_ap

    dtype = {"float64": np.float64, "float32": np.float32}[precision]
    began = time.perf_counter()
    if task in ("replicate", "copairs"):
        table, features = jump_like_plates(plates, dtype=dtype)
    else:
        compounds, reagents, features = consensus_tables(plates)
    built = time.perf_counter()
    condition = {"Metadata_modality": "compound"}
    if task == "replicate":
        ap, scored = retrieval.replicate_retrieval(table, features, "cpjump1", null_size, 0, dtype)
        figures = {"queries": len(ap), "groups": len(scored), "map": float(scored["mean_average_precision"].mean())}
    elif task == "copairs":
        import copairs.map as cm
        from copairs.matching import assign_reference_index

        table = table.assign(row_id=np.arange(len(table)))
        meta = assign_reference_index(table[[PERT, PLATE, "row_id"]], f"{PERT} == 'DMSO'")
        ref = "Metadata_Reference_Index"
        ap = cm.average_precision(meta, table[features].to_numpy(), pos_sameby=[PERT, ref], pos_diffby=[],
                                  neg_sameby=[PLATE], neg_diffby=[PERT, ref], progress_bar=False)
        ap = ap[ap["n_pos_pairs"] > 0]
        with tempfile.TemporaryDirectory() as cache:
            scored = cm.mean_average_precision(ap, [PERT], null_size=null_size, threshold=0.05, seed=0,
                                               progress_bar=False, cache_dir=cache)
        figures = {"queries": len(ap), "groups": len(scored), "map": float(scored["mean_average_precision"].mean())}
    elif task == "sister":
        ap = retrieval_ap(compounds, features, multilabel=TARGETS, multilabel_mode="per_label", abs_similarity=True,
                          dtype=dtype)
        ap, scored = retrieval.score_condition(ap.assign(**{GENE: ap[TARGETS]}), [GENE], condition, "cpjump1",
                                               null_size, 0, names=PERT)
        figures = {"queries": len(ap), "groups": len(scored), "map": float(scored["mean_average_precision"].mean())}
    elif task == "target_id":
        from paintbench import target_id

        genes = reagents.groupby(GENE, sort=True)[features].median().reset_index()
        compounds = compounds.assign(Metadata_pert_iname=compounds[PERT])
        cosine = target_id.Cosines.of(compounds[features].to_numpy(), genes[features].to_numpy())
        annotated = target_id.annotated_pairs(compounds[TARGETS], genes[GENE])
        compared = [({"Metadata_cell_type": "U2OS", "compound_timepoint": 48, "compound_plate_group": "jump",
                      "Metadata_matched_modality": "crispr", "matched_timepoint": 96, "matched_plate_group": "jump"},
                     compounds, genes, cosine, annotated)]
        summary, queries = target_id.shortlists(compared, draws=1000)
        calls = target_id.polypharmacology(compared)
        figures = {"queries": len(queries), "groups": len(summary), "calls": len(calls)}
    else:
        both = pd.concat([compounds, reagents], ignore_index=True)
        ap = retrieval_ap(both, features, pos_diff=["Metadata_modality"], neg_diff=["Metadata_modality"],
                          multilabel=TARGETS, multilabel_mode="per_label", abs_similarity=True, dtype=dtype)
        ap, scored = retrieval.score_condition(ap.assign(**{GENE: ap[TARGETS]}), [GENE], condition, "cpjump1",
                                               null_size, 0, names=PERT)
        figures = {"queries": len(ap), "groups": len(scored), "map": float(scored["mean_average_precision"].mean())}
    finished = time.perf_counter()
    out.write_text(json.dumps({**figures, "build_s": built - began, "task_s": finished - built}))


def measure(task: str, plates: int, args: argparse.Namespace, tmp: Path) -> dict:
    """Run one task in a child process; copairs under --copairs-timeout and --copairs-memory-gb."""
    out = tmp / f"{task}_{plates}.json"
    cmd = [sys.executable, __file__, "--worker", task, "--plates", str(plates), "--precision", args.precision,
           "--null-size", str(args.null_size), "--out", str(out)]
    limit = (args.copairs_memory_gb if task == "copairs" else args.memory_gb) * 2**30

    def cap() -> None:
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    began = time.perf_counter()
    proc = subprocess.Popen(cmd, preexec_fn=cap)
    deadline = began + (args.copairs_timeout if task == "copairs" else 10**9)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            return {"task": task, "plates": plates, "wells": plates * WELLS, "stopped": f"over {args.copairs_timeout} s"}
        time.sleep(0.5)
    row = {"task": task, "plates": plates, "wells": plates * WELLS, "wall_s": round(time.perf_counter() - began, 1),
           "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    if os.waitstatus_to_exitcode(status) != 0:
        gb = args.copairs_memory_gb if task == "copairs" else args.memory_gb
        return {**row, "stopped": f"exit {os.waitstatus_to_exitcode(status)} (address-space limit {gb} GB)"}
    return {**row, **{k: round(v, 4) if isinstance(v, float) else v for k, v in json.loads(out.read_text()).items()}}


def exponents(rows: list[dict]) -> list[dict]:
    """Scaling exponent of each task's time between consecutive sizes: log(t2 / t1) / log(n2 / n1)."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        done = [r for r in rows if r["task"] == task and "task_s" in r]
        for a, b in zip(done, done[1:]):
            out.append({"task": task, "from_wells": a["wells"], "to_wells": b["wells"],
                        "exponent": round(np.log(b["task_s"] / a["task_s"]) / np.log(b["wells"] / a["wells"]), 2)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plates", type=int, nargs="+", default=[20, 200, 1700])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["replicate", "copairs"])
    parser.add_argument("--precision", choices=["float32", "float64"], default="float32")
    parser.add_argument("--null-size", type=int, default=10_000)
    parser.add_argument("--copairs-timeout", type=int, default=1800, help="seconds before copairs is stopped")
    parser.add_argument("--copairs-memory-gb", type=int, default=16, help="address-space limit of copairs' process")
    parser.add_argument("--memory-gb", type=int, default=20, help="address-space limit of paintbench's processes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args.worker, args.plates[0], args.precision, args.null_size, args.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for plates in args.plates:
            for task in args.tasks:
                row = measure(task, plates, args, Path(tmp))
                print(json.dumps(row), flush=True)
                rows.append(row)
    slopes = exponents(rows)
    for slope in slopes:
        print(json.dumps(slope), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "exponents": slopes}, indent=1))


if __name__ == "__main__":
    main()
