"""`paintbench STAGE ...`: the one command line every Snakemake rule calls.

Each rule's log starts with the exact command, so any stage can be rerun by hand.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

from paintbench.cli_format import METADATA_HELP, HelpFormatter, add_command, add_s3_options

log = logging.getLogger("paintbench")


def _csv_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def _channel_map(text: str) -> dict[str, int]:
    """'DNA=5,ER=4' -> {'DNA': 5, 'ER': 4}."""
    pairs = [item.split("=", 1) for item in _csv_list(text)]
    if any(len(p) != 2 or not p[1].isdigit() for p in pairs):
        raise argparse.ArgumentTypeError(f"--channels: expected NAME=NUMBER,... got {text!r}")
    return {name: int(number) for name, number in pairs}


def _default_image_pattern() -> str:
    from paintbench.image_pattern import DEFAULT_IMAGE_PATTERN

    return DEFAULT_IMAGE_PATTERN


def _sites(text: str) -> list[int] | str:
    return "all" if text == "all" else [int(s) for s in _csv_list(text)]


def cmd_download(args: argparse.Namespace) -> None:
    """Images of one plate (fetched, found or generated), then the LoadData table of its complete fields and the
    QC table of what is missing or damaged (a plate missing more than --max-missing-fraction fails)."""
    from paintbench.atomic import write_table
    from paintbench.image_pattern import index_image_folder
    from paintbench.layout import all_wells
    from paintbench.loaddata import field_problems, load_data_table
    from paintbench.metadata import plate_info
    from paintbench.qc import check_missing_fraction, qc_table

    plate = plate_info(args.plate, args.metadata_dir)
    wells = all_wells(plate.format) if args.wells == ["all"] else args.wells
    sites = list(range(1, plate.sites_per_well + 1)) if args.sites == "all" else args.sites
    image_dir = Path(args.image_dir)
    records: list[dict] = []
    if args.source == "s3":
        from paintbench.download import download_plate

        summary = download_plate(
            plate.barcode, plate.batch, wells, sites, sorted(args.channels.values()), image_dir,
            bucket=args.bucket, gallery_prefix=args.gallery_prefix, endpoint_url=args.endpoint_url,
            workers=args.workers, max_attempts=args.max_attempts, anonymous=not args.signed,
            image_pattern=args.image_pattern,
        )
        names = {f"ch{number}": name for name, number in args.channels.items()}
        records = [{**r, "channel": names.get(r["channel"], r["channel"])} for r in summary.missing]
        log.info("plate %s: %d listed, %d fetched, %d already complete, %.1f MB", plate.barcode, summary.n_listed,
                 summary.n_downloaded, summary.n_skipped_complete, summary.bytes_downloaded / 1e6)
    elif args.source == "synthetic":
        from paintbench.atomic import read_table
        from paintbench.synthetic import generate_plate

        if args.ground_truth is None:
            raise SystemExit("--ground-truth is required with --source synthetic")
        fields = generate_plate(
            plate.barcode, wells, sites, args.channels, read_table(args.ground_truth), image_dir,
            field_size=args.field_size, cells_per_field=args.cells_per_field, seed=args.seed,
            metadata_dir=args.metadata_dir,
        )
        write_table(fields, image_dir / "synthetic_fields.parquet")
        log.info("plate %s: generated %d fields, %d cells", plate.barcode, len(fields), fields["n_cells"].sum())
    known = {(r["Metadata_Well"], int(r["Metadata_Site"])) for r in records}
    files = index_image_folder(image_dir, args.image_pattern, plate.barcode)  # one listing of the plate's folder
    records += field_problems(plate.barcode, image_dir, wells, sites, args.channels, known, files)
    incomplete = {(r["Metadata_Well"], int(r["Metadata_Site"])) for r in records}
    check_missing_fraction(plate.barcode, len(wells) * len(sites), len(incomplete), args.max_missing_fraction)
    table = load_data_table(plate.barcode, image_dir, wells, sites, args.channels, exclude=incomplete, files=files)
    if args.qc_output:
        write_table(qc_table(records), args.qc_output)
    write_table(table, args.output)
    log.info("plate %s: LoadData table with %d fields -> %s (%d field(s) left out)", plate.barcode, len(table),
             args.output, len(incomplete))


def cmd_ground_truth(args: argparse.Namespace) -> None:
    from paintbench.atomic import write_table
    from paintbench.synthetic import ground_truth

    classes = dict(item.split("=", 1) for item in args.gene_classes)
    truth = ground_truth(args.platemaps, args.seed, args.strong_fraction, args.null_fraction, args.metadata_dir,
                         effect_scale=args.effect_scale, gene_classes=classes)
    write_table(truth, args.output)
    log.info("ground truth: %d perturbations -> %s", len(truth), args.output)


def cmd_illum(args: argparse.Namespace) -> None:
    from paintbench import CHANNELS
    from paintbench.atomic import read_table
    from paintbench.illum import compute_plate_illum, fetch_gallery_illum
    from paintbench.loaddata import channel_names

    load_data = read_table(args.load_data)
    channels = [c for c in channel_names(load_data) if c in CHANNELS]
    plate = str(load_data["Metadata_Plate"].iloc[0])
    if args.source == "gallery":
        from paintbench.metadata import plate_info

        batch = plate_info(plate, args.metadata_dir).batch
        fetch_gallery_illum(plate, batch, channels, Path(args.output_dir), args.bucket, args.gallery_prefix,
                            args.endpoint_url, not args.signed)
        skipped: list[dict] = []
    else:
        _, skipped = compute_plate_illum(load_data, Path(args.output_dir), channels, args.threads,
                                         args.smoothing_fraction, args.skip_bad_fields)
    if args.qc_output:
        from paintbench.atomic import write_table
        from paintbench.qc import qc_table

        write_table(qc_table(skipped), args.qc_output)


def cmd_cellprofiler(args: argparse.Namespace) -> None:
    from paintbench.atomic import read_table
    from paintbench.cellprofiler import run_shard

    run_shard(read_table(args.load_data), args.wells, Path(args.illum_dir), args.executable, Path(args.pipeline),
              Path(args.output), Path(args.qc_output), args.skip_bad_fields)


def cmd_well_profiles(args: argparse.Namespace) -> None:
    import pandas as pd

    from paintbench.aggregate import well_profiles
    from paintbench.atomic import concat_parquet, write_table

    source = args.single_cells
    if args.merged_single_cells:
        rows = concat_parquet(args.single_cells, args.merged_single_cells)
        log.info("%d single cells -> %s", rows, args.merged_single_cells)
        source = [args.merged_single_cells]
    profiles = well_profiles([Path(p) for p in source], Path(args.output), operation=args.operation)
    log.info("%d well profiles -> %s", 0 if profiles is None else len(profiles), args.output)
    if args.qc_output:
        skipped = pd.concat([pd.read_parquet(p) for p in args.qc], ignore_index=True)
        write_table(skipped, args.qc_output)
        log.info("%d skipped fields recorded in %s", len(skipped), args.qc_output)


def cmd_plate_qc(args: argparse.Namespace) -> None:
    """One plate's QC table from its stages' fragments (with --load-data and --wells: wells left without a field
    are added), or the fragments of several plates concatenated (e.g. qc/missing_fields.tsv)."""
    import pandas as pd

    from paintbench.atomic import read_table, write_table
    from paintbench.qc import plate_qc, qc_table, read_fragment

    if args.load_data:
        table = plate_qc(args.fragments, args.wells, read_table(args.load_data))
    else:
        parts = [read_fragment(p) for p in args.fragments if Path(p).stat().st_size]
        table = pd.concat(parts, ignore_index=True) if parts else qc_table()
    write_table(table, args.output)
    log.info("%d QC record(s) -> %s", len(table), args.output)


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "download", "fetch, find or generate one plate's images and write its LoadData table",
                    ["paintbench download --source s3 --plate BR00116991 --wells all --sites 1 "
                     "--channels DNA=5,ER=4,RNA=3,AGP=2,Mito=1 --image-dir data/images/BR00116991 "
                     "--qc-output results/qc/BR00116991/download.tsv --output results/load_data/BR00116991.csv"])
    p.add_argument("--source", choices=["s3", "local", "synthetic"], required=True,
                   help="s3: fetch from the Gallery; local: images already in --image-dir; synthetic: generate them")
    p.add_argument("--plate", required=True, help="plate barcode, e.g. BR00116991")
    p.add_argument("--wells", type=_csv_list, default=["all"], help="comma-separated wells, or 'all'")
    p.add_argument("--sites", type=_sites, default="all", help="comma-separated field numbers, or 'all'")
    p.add_argument("--channels", type=_channel_map, required=True, help="channel map, e.g. DNA=5,ER=4,RNA=3,AGP=2,Mito=1")
    p.add_argument("--image-dir", required=True, help="folder of the plate's images (written for s3/synthetic)")
    p.add_argument("--image-pattern", default=_default_image_pattern(),
                   help="regular expression of the image file names, with named groups well (or row and column), "
                        "site, channel and optionally plate and plane (default: the Phenix names of the Gallery)")
    p.add_argument("--metadata-dir", default=None, help=METADATA_HELP)
    p.add_argument("--output", required=True, help="LoadData CSV to write")
    p.add_argument("--qc-output", default=None, help="TSV of the missing or damaged images (plate, well, site, channel)")
    p.add_argument("--max-missing-fraction", type=float, default=0.05,
                   help="fail when more than this share of the requested fields is missing or damaged")
    s3 = p.add_argument_group("s3 source")
    add_s3_options(s3)
    s3.add_argument("--workers", type=int, default=8, help="parallel S3 transfers")
    s3.add_argument("--max-attempts", type=int, default=6, help="tries per request, with exponential backoff")
    syn = p.add_argument_group("synthetic source")
    syn.add_argument("--ground-truth", default=None,
                     help="required with --source synthetic: results/synthetic/ground_truth.parquet")
    syn.add_argument("--seed", type=int, default=0, help="seed of the generator")
    syn.add_argument("--field-size", type=int, default=320, help="field width and height in pixels")
    syn.add_argument("--cells-per-field", type=int, default=24, help="mean cells in a negative-control field")
    p.set_defaults(func=cmd_download)


def _add_ground_truth(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "ground-truth", "planted phenotypes of the synthetic plates",
                    ["paintbench ground-truth --platemaps JUMP-Target-1_compound_platemap,JUMP-Target-1_crispr_platemap "
                     "--seed 7 --gene-classes BRD4=null --output results/synthetic/ground_truth.parquet"])
    p.add_argument("--platemaps", type=_csv_list, required=True, help="comma-separated platemap names")
    p.add_argument("--metadata-dir", default=None, help=METADATA_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the draws of gene classes and effect directions")
    p.add_argument("--strong-fraction", type=float, default=0.4, help="share of target directions with a strong phenotype")
    p.add_argument("--null-fraction", type=float, default=0.3, help="share of perturbations with no phenotype")
    p.add_argument("--effect-scale", type=float, default=1.0, help="multiplies every planted effect")
    p.add_argument("--gene-classes", nargs="*", default=[], metavar="GENE=CLASS",
                   help="set named genes' classes (strong, weak, null), e.g. BRD4=null")
    p.add_argument("--output", required=True, help="ground truth table (Parquet)")
    p.set_defaults(func=cmd_ground_truth)


def _add_illum(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "illum", "illumination function per channel of one plate (<plate>_Illum<Channel>.npy)",
                    ["paintbench illum --load-data results/load_data/BR00116991.csv --output-dir results/illum/BR00116991 "
                     "--qc-output results/qc/BR00116991/illum.tsv"])
    p.add_argument("--load-data", required=True, help="the plate's LoadData CSV")
    p.add_argument("--output-dir", required=True, help="folder of the <plate>_Illum<Channel>.npy files")
    p.add_argument("--source", choices=["computed", "gallery"], default="computed",
                   help="compute from the plate's images, or fetch the Gallery's precomputed functions")
    p.add_argument("--threads", type=int, default=2, help="threads reading the images")
    p.add_argument("--smoothing-fraction", type=float, default=500 / 1080,
                   help="median filter size / field width (default: 500/1080, the consortium's 500 px at 1080 px)")
    p.add_argument("--skip-bad-fields", action="store_true", help="leave unreadable fields out and record them")
    p.add_argument("--qc-output", default=None, help="TSV of the fields left out")
    p.add_argument("--metadata-dir", default=None, help=METADATA_HELP)
    add_s3_options(p.add_argument_group("gallery source"))
    p.set_defaults(func=cmd_illum)


def _add_cellprofiler(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "cellprofiler", "run CellProfiler on one shard (plate x wells) -> single-cell Parquet",
                    ["paintbench cellprofiler --load-data results/load_data/BR00116991.csv --wells A01,A02 "
                     "--illum-dir results/illum/BR00116991 --pipeline config/cellprofiler/analysis.cppipe "
                     "--executable .venvs/cellprofiler/bin/cellprofiler "
                     "--output results/cellprofiler/BR00116991/shards/s000.parquet "
                     "--qc-output results/cellprofiler/BR00116991/shards/s000.qc.parquet"])
    p.add_argument("--load-data", required=True, help="the plate's LoadData CSV")
    p.add_argument("--wells", type=_csv_list, required=True, help="comma-separated wells of the shard")
    p.add_argument("--illum-dir", required=True, help="folder with <plate>_Illum<Channel>.npy")
    p.add_argument("--pipeline", required=True, help="analysis .cppipe")
    p.add_argument("--executable", default="cellprofiler", help="CellProfiler 5 command or path")
    p.add_argument("--skip-bad-fields", action="store_true", help="skip and record unreadable fields instead of failing")
    p.add_argument("--output", required=True, help="single-cell Parquet of the shard")
    p.add_argument("--qc-output", required=True, help="Parquet of the fields skipped")
    p.set_defaults(func=cmd_cellprofiler)


def _add_well_profiles(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "well-profiles", "aggregate single cells (or crops) to well profiles, streaming",
                    ["paintbench well-profiles --single-cells results/cellprofiler/BR00116991/shards/s000.parquet "
                     "--qc results/cellprofiler/BR00116991/shards/s000.qc.parquet "
                     "--merged-single-cells results/cellprofiler/BR00116991/single_cells.parquet "
                     "--qc-output results/cellprofiler/BR00116991/skipped_fields.tsv "
                     "--output results/profiles/cellprofiler/BR00116991.parquet"])
    p.add_argument("--single-cells", nargs="+", required=True, help="Parquet files, wells consecutive")
    p.add_argument("--operation", choices=["median", "mean"], default="median", help="aggregation of a well's rows")
    p.add_argument("--merged-single-cells", default=None, help="also write all single cells into one Parquet")
    p.add_argument("--qc", nargs="*", default=[], help="QC Parquet files of the shards")
    p.add_argument("--qc-output", default=None, help="TSV of every skipped field")
    p.add_argument("--output", required=True, help="well profiles (Parquet)")
    p.set_defaults(func=cmd_well_profiles)


def _add_plate_qc(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "plate-qc", "join the QC records of a plate's stages (missing, damaged, skipped fields)",
                    ["paintbench plate-qc --load-data results/load_data/BR00116991.csv --fragments "
                     "results/qc/BR00116991/download.tsv results/qc/BR00116991/illum.tsv --wells A01,A02 "
                     "--output results/qc/BR00116991.tsv",
                     "paintbench plate-qc --fragments results/qc/BR00116991/download.tsv results/qc/BR00116992/download.tsv "
                     "--output results/qc/missing_fields.tsv"])
    p.add_argument("--fragments", nargs="+", required=True, help="QC tables written by the stages (TSV or Parquet)")
    p.add_argument("--load-data", default=None, help="the plate's LoadData CSV (its complete fields)")
    p.add_argument("--wells", type=_csv_list, default=[], help="the plate's requested wells (with --load-data)")
    p.add_argument("--output", required=True, help="QC table (TSV)")
    p.set_defaults(func=cmd_plate_qc)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_download, _add_ground_truth, _add_illum, _add_cellprofiler, _add_well_profiles, _add_plate_qc,
]


def build_parser() -> argparse.ArgumentParser:
    from paintbench import __version__
    from paintbench.cli_benchmark import add_commands as add_benchmark_commands
    from paintbench.cli_config import add_commands as add_config_commands
    from paintbench.cli_report import add_commands as add_report_commands
    from paintbench.cli_vit import add_commands as add_vit_commands

    parser = argparse.ArgumentParser(prog="paintbench", description=__doc__, formatter_class=HelpFormatter,
                                     epilog="`paintbench COMMAND --help` describes a command, with an example.")
    parser.add_argument("--version", action="version", version=f"paintbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="COMMAND", help="the stage to run")
    for add in [*SUBCOMMANDS, add_vit_commands, add_benchmark_commands, add_report_commands, add_config_commands]:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.info("rerun this stage with: %s", shlex.join(["python", "-m", "paintbench", *argv]))
    started = time.perf_counter()
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        log.error("%s failed: %s", args.stage, err)
        return 1
    log.info("%s finished in %.1f s", args.stage, time.perf_counter() - started)
    return 0
