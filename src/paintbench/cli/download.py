"""`paintbench download | ground-truth | plate-qc`: the commands of workflow/rules/download.smk."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from paintbench.cli.options import (METADATA_DIR, ConfigOption, add_command, add_config_options, add_s3_options,
                                    channel_map, csv_list, resolved_metadata_dir, sites)

log = logging.getLogger("paintbench")

DOWNLOAD_OPTIONS = [
    ConfigOption("--source", "source", "s3: fetch from the Gallery; local: images already in --image-dir; "
                                       "synthetic: generate them"),
    ConfigOption("--image-pattern", "image_pattern",
                 "regular expression of the image file names, with named groups well (or row and column), site, "
                 "channel and optionally plate and plane"),
    ConfigOption("--max-missing-fraction", "qc.max_missing_fraction",
                 "fail when more than this share of the requested fields is missing or damaged"),
]
TRANSFER_OPTIONS = [
    ConfigOption("--workers", "download.workers", "parallel S3 transfers"),
    ConfigOption("--max-attempts", "download.max_attempts", "tries per request, with exponential backoff"),
]
GENERATOR_OPTIONS = [
    ConfigOption("--seed", "synthetic.seed", "seed of the generator"),
    ConfigOption("--field-size", "synthetic.field_size", "field width and height in pixels"),
    ConfigOption("--cells-per-field", "synthetic.cells_per_field", "mean cells in a negative-control field"),
    ConfigOption("--position-effect", "synthetic.position_effect", "SD of the planted per-well-position artefact"),
]
GROUND_TRUTH_OPTIONS = [
    ConfigOption("--seed", "synthetic.seed", "seed of the draws of gene classes and effect directions"),
    ConfigOption("--strong-fraction", "synthetic.strong_fraction", "share of target directions with a strong phenotype"),
    ConfigOption("--null-fraction", "synthetic.null_fraction", "share of perturbations with no phenotype"),
    ConfigOption("--effect-scale", "synthetic.effect_scale", "multiplies every planted effect"),
    ConfigOption("--position-effect", "synthetic.position_effect", "SD of the planted per-well-position artefact"),
]


def _source(args: argparse.Namespace):
    from paintbench.download import S3Source, SyntheticSource

    if args.source == "s3":
        return S3Source(args.bucket, args.gallery_prefix, args.endpoint_url, args.anonymous, args.workers,
                        args.max_attempts)
    if args.source == "synthetic":
        if args.ground_truth is None:
            raise ValueError("--ground-truth is required with --source synthetic")
        return SyntheticSource(Path(args.ground_truth), args.seed, args.field_size, args.cells_per_field,
                               resolved_metadata_dir(args), args.position_effect)
    return None


def cmd_download(args: argparse.Namespace) -> None:
    """Images of one plate (fetched, found or generated), then the LoadData table of its complete fields and the
    QC table of what is missing or damaged (a plate missing more than --max-missing-fraction fails)."""
    from paintbench.atomic import write_table
    from paintbench.download import prepare_plate
    from paintbench.metadata import plate_info

    from paintbench.qc import TooManyMissingError

    plate = plate_info(args.plate, resolved_metadata_dir(args))
    try:
        table, qc = prepare_plate(plate, args.wells, args.sites, args.channels, args.image_dir, args.image_pattern,
                                  _source(args), args.max_missing_fraction)
    except TooManyMissingError as error:
        records = getattr(error.__cause__, "records", None)
        if records is not None and args.qc_output:  # the job's outputs go with its failure: this file stays
            kept = Path(args.qc_output).with_suffix(".failed.tsv")
            write_table(records, kept)
            raise TooManyMissingError(f"{error} Every missing image: {kept}") from error
        raise
    if args.qc_output:
        write_table(qc, args.qc_output)
    write_table(table, args.output)
    log.info("LoadData table -> %s", args.output)


def cmd_ground_truth(args: argparse.Namespace) -> None:
    from paintbench.atomic import write_table
    from paintbench.synthetic import ground_truth

    classes = dict(item.split("=", 1) for item in args.gene_classes)
    truth = ground_truth(args.platemaps, args.seed, args.strong_fraction, args.null_fraction,
                         resolved_metadata_dir(args), effect_scale=args.effect_scale, gene_classes=classes)
    write_table(truth, args.output)
    log.info("ground truth: %d perturbations -> %s", len(truth), args.output)
    if args.position_output:
        from paintbench.layout import all_wells
        from paintbench.synthetic import position_effects

        wells = all_wells(384)  # a 96-well position's name is the same well of the 384 table
        write_table(position_effects(wells, args.seed, args.position_effect), args.position_output)
        log.info("position artefact (SD %g) of %d well positions -> %s", args.position_effect, len(wells),
                 args.position_output)


def cmd_plate_qc(args: argparse.Namespace) -> None:
    """One plate's QC table from its stages' fragments (with --load-data and --wells: wells left without a field
    are added), or the fragments of several plates concatenated (e.g. qc/missing_fields.tsv)."""
    from paintbench.atomic import read_table, write_table
    from paintbench.qc import concat_fragments, plate_qc

    table = plate_qc(args.fragments, args.wells, read_table(args.load_data)) if args.load_data else \
        concat_fragments(args.fragments)
    write_table(table, args.output)
    log.info("%d QC record(s) -> %s", len(table), args.output)


def gene_classes_words(classes: dict[str, str]) -> str:
    """synthetic.gene_classes as --gene-classes takes it (GENE=CLASS ...)."""
    return " ".join(f"{gene}={klass}" for gene, klass in classes.items())


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "download", "fetch, find or generate one plate's images and write its LoadData table",
                    ["paintbench download --source s3 --plate BR00116991 --wells all --sites 1 "
                     "--channels DNA=5,ER=4,RNA=3,AGP=2,Mito=1 --image-dir data/images/BR00116991 "
                     "--qc-output results/qc/BR00116991/download.tsv --output results/load_data/BR00116991.csv"])
    add_config_options(p, DOWNLOAD_OPTIONS[:1])
    p.add_argument("--plate", required=True, help="plate barcode, e.g. BR00116991")
    p.add_argument("--wells", type=csv_list, default=["all"], help="comma-separated wells, or 'all'")
    p.add_argument("--sites", type=sites, default="all", help="comma-separated field numbers, or 'all'")
    p.add_argument("--channels", type=channel_map, required=True, help="channel map, e.g. DNA=5,ER=4,RNA=3,AGP=2,Mito=1")
    p.add_argument("--image-dir", required=True, help="folder of the plate's images (written for s3/synthetic)")
    add_config_options(p, [*DOWNLOAD_OPTIONS[1:], METADATA_DIR])
    p.add_argument("--output", required=True, help="LoadData CSV to write")
    p.add_argument("--qc-output", default=None, help="TSV of the missing or damaged images (plate, well, site, channel)")
    s3 = p.add_argument_group("s3 source")
    add_s3_options(s3)
    add_config_options(s3, TRANSFER_OPTIONS)
    syn = p.add_argument_group("synthetic source")
    syn.add_argument("--ground-truth", default=None,
                     help="required with --source synthetic: results/synthetic/ground_truth.parquet")
    add_config_options(syn, GENERATOR_OPTIONS)
    p.set_defaults(func=cmd_download)

    p = add_command(sub, "ground-truth", "planted phenotypes of the synthetic plates",
                    ["paintbench ground-truth --platemaps JUMP-Target-1_compound_platemap,JUMP-Target-1_crispr_platemap "
                     "--seed 7 --gene-classes BRD4=null --output results/synthetic/ground_truth.parquet"])
    p.add_argument("--platemaps", type=csv_list, required=True, help="comma-separated platemap names")
    add_config_options(p, [METADATA_DIR, *GROUND_TRUTH_OPTIONS])
    p.add_argument("--gene-classes", nargs="*", default=[], metavar="GENE=CLASS",
                   help="set named genes' classes (strong, weak, null), e.g. BRD4=null (config key "
                        "synthetic.gene_classes)")
    p.add_argument("--output", required=True, help="ground truth table (Parquet)")
    p.add_argument("--position-output", default=None,
                   help="the planted per-well-position artefact (Parquet: Metadata_Well, effect_*)")
    p.set_defaults(func=cmd_ground_truth)

    p = add_command(sub, "plate-qc", "join the QC records of a plate's stages (missing, damaged, skipped fields)",
                    ["paintbench plate-qc --load-data results/load_data/BR00116991.csv --fragments "
                     "results/qc/BR00116991/download.tsv results/qc/BR00116991/illum.tsv --wells A01,A02 "
                     "--output results/qc/BR00116991.tsv",
                     "paintbench plate-qc --fragments results/qc/BR00116991/download.tsv results/qc/BR00116992/download.tsv "
                     "--output results/qc/missing_fields.tsv"])
    p.add_argument("--fragments", nargs="+", required=True, help="QC tables written by the stages (TSV or Parquet)")
    p.add_argument("--load-data", default=None, help="the plate's LoadData CSV (its complete fields)")
    p.add_argument("--wells", type=csv_list, default=[], help="the plate's requested wells (with --load-data)")
    p.add_argument("--output", required=True, help="QC table (TSV)")
    p.set_defaults(func=cmd_plate_qc)
