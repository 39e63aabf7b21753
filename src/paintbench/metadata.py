"""Plate and perturbation metadata bundled with the project (CPJUMP1 plates, JUMP-Target libraries).

Every table this module returns uses pycytominer/copairs `Metadata_` column names, so the
annotation of well profiles later is a plain merge on (Metadata_Plate, Metadata_Well).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from paintbench.layout import PLATE_FORMATS, all_wells, in_plate_format, infer_plate_format
from paintbench.schema import BUNDLED_METADATA

DEFAULT_METADATA_DIR = BUNDLED_METADATA
PLATES_FILE = "experiment-metadata.tsv"
# Optional columns of PLATES_FILE for plates other than CPJUMP1's: 96 or 384 (else inferred from the platemap),
# and the fields imaged per well (else guessed from Number_of_images).
FORMAT_COLUMN = "Plate_format"
SITES_COLUMN = "Sites_per_well"
MODALITIES = ("compound", "crispr", "orf")
NEGCON = "negcon"
EMPTY = "empty"


class MetadataError(ValueError):
    """Unknown plate, platemap or perturbation library."""


# The CPJUMP1 paper's benchmark plates (benchmark/1.0.calculate-map-cp.ipynb): Density 100, no antibiotics, and
# the parental line for compounds (the Cas9 compound plates are left out). ORF plates are parental, CRISPR plates Cas9.
BENCHMARK_DENSITY = 100
BENCHMARK_ANTIBIOTICS = "absent"
BENCHMARK_CELL_LINE = {"compound": "Parental", "crispr": "Cas9", "orf": "Parental"}
BENCHMARK_TIME_DELAY = "Day0"
BENCHMARK_GROUP = "benchmark"


@dataclass(frozen=True)
class Plate:
    barcode: str
    batch: str
    platemap: str
    modality: str
    cell_type: str
    timepoint: int
    sites_per_well: int
    group: str = BENCHMARK_GROUP  # how the plate departs from the benchmark conditions; never pooled across groups
    format: int = 384  # wells per plate: 96 (A01 ... H12) or 384 (A01 ... P24)


def plate_group(row: pd.Series) -> str:
    """'benchmark', or what sets a plate apart from the paper's benchmark plates ('density 80', 'Cas9 line', ...).

    Plates of one cell type, modality and time point that differ in density, antibiotics, cell line or time delay
    are different experiments: the retrieval tasks keep them apart. Columns a metadata table lacks do not count.
    """
    modality = str(row["Perturbation"]).lower()
    differences = []
    if pd.notna(row.get("Density")) and int(row["Density"]) != BENCHMARK_DENSITY:
        differences.append(f"density {int(row['Density'])}")
    if pd.notna(row.get("Antibiotics")) and str(row["Antibiotics"]) != BENCHMARK_ANTIBIOTICS:
        differences.append(str(row["Antibiotics"]).lower())
    line = BENCHMARK_CELL_LINE.get(modality)
    if pd.notna(row.get("Cell_line")) and line is not None and str(row["Cell_line"]) != line:
        differences.append(f"{row['Cell_line']} line")
    if pd.notna(row.get("Time_delay")) and str(row["Time_delay"]) != BENCHMARK_TIME_DELAY:
        differences.append(f"delay {row['Time_delay']}")
    return ", ".join(differences) or BENCHMARK_GROUP


def paper_plates(metadata_dir: str | Path | None = None) -> list[str]:
    """The plates of the CPJUMP1 paper's benchmark (`plates: paper`): every plate whose group is 'benchmark'."""
    table = plate_table(metadata_dir)
    return [str(row["Assay_Plate_Barcode"]) for _, row in table.iterrows() if plate_group(row) == BENCHMARK_GROUP]


def _dir(metadata_dir: str | Path | None) -> Path:
    return Path(metadata_dir) if metadata_dir is not None else DEFAULT_METADATA_DIR


@lru_cache(maxsize=8)
def plate_table(metadata_dir: str | Path | None = None) -> pd.DataFrame:
    """The experiment metadata: one row per plate (Assay_Plate_Barcode, Perturbation, Cell_type, Time...)."""
    path = _dir(metadata_dir) / PLATES_FILE
    table = pd.read_csv(path, sep="\t", dtype={"Assay_Plate_Barcode": str})
    missing = {"Batch", "Plate_Map_Name", "Assay_Plate_Barcode", "Perturbation", "Cell_type", "Time"} - set(table)
    if missing:
        raise MetadataError(f"{path}: missing columns {sorted(missing)}")
    return table


def known_plates(metadata_dir: str | Path | None = None) -> list[str]:
    return plate_table(metadata_dir)["Assay_Plate_Barcode"].tolist()


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """'unknown plate X; did you mean Y? known: ...' -- shared by every name look-up."""
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    shown = ", ".join(known[:60]) + (" ..." if len(known) > 60 else "")
    return f"unknown {kind} {name!r}{hint} (known: {shown})"


def plate_info(barcode: str, metadata_dir: str | Path | None = None) -> Plate:
    table = plate_table(metadata_dir)
    rows = table[table["Assay_Plate_Barcode"] == barcode]
    if rows.empty:
        raise MetadataError(unknown_name_message("plate", barcode, table["Assay_Plate_Barcode"].tolist()))
    row = rows.iloc[0]
    platemap = str(row["Plate_Map_Name"])
    plate_format = plate_format_of(row, metadata_dir)
    check_platemap_wells(platemap, plate_format, barcode, metadata_dir)
    return Plate(
        barcode=barcode,
        batch=str(row["Batch"]),
        platemap=platemap,
        modality=str(row["Perturbation"]).lower(),
        cell_type=str(row["Cell_type"]),
        timepoint=int(row["Time"]),
        sites_per_well=sites_per_well(row, plate_format, metadata_dir),
        group=plate_group(row),
        format=plate_format,
    )


def _positive_int(row: pd.Series, column: str, metadata_dir: str | Path | None) -> int | None:
    """An optional whole-number column of a plate's row; None when the table lacks it or the cell is empty."""
    value = row.get(column)
    if value is None or pd.isna(value):
        return None
    number = pd.to_numeric(value, errors="coerce")
    if pd.isna(number) or number != int(number) or number < 1:
        raise MetadataError(f"{_dir(metadata_dir) / PLATES_FILE}: plate {row['Assay_Plate_Barcode']}: column "
                            f"{column} is {value!r}, not a whole number >= 1")
    return int(number)


def plate_format_of(row: pd.Series, metadata_dir: str | Path | None = None) -> int:
    """The Plate_format column (96 or 384), else 96 when every well of the platemap lies within A01 ... H12."""
    given = _positive_int(row, FORMAT_COLUMN, metadata_dir)
    if given is None:
        return infer_plate_format(list(platemap_wells(str(row["Plate_Map_Name"]), metadata_dir)))
    if given not in PLATE_FORMATS:
        raise MetadataError(f"{_dir(metadata_dir) / PLATES_FILE}: plate {row['Assay_Plate_Barcode']}: column "
                            f"{FORMAT_COLUMN} is {given}; allowed: {sorted(PLATE_FORMATS)}")
    return given


def sites_per_well(row: pd.Series, plate_format: int, metadata_dir: str | Path | None = None) -> int:
    """The Sites_per_well column, else CPJUMP1's rule: Gallery plates carry 8 channels, so a plate with more than
    12 fields' worth of images per well has 16 fields (~49k images on 384 wells), otherwise 9 (~27k)."""
    given = _positive_int(row, SITES_COLUMN, metadata_dir)
    if given is not None:
        return given
    n_images = row.get("Number_of_images")
    return 16 if n_images is not None and pd.notna(n_images) and int(n_images) > plate_format * 8 * 12 else 9


def _platemap_file(platemap: str, metadata_dir: str | Path | None) -> Path:
    folder = _dir(metadata_dir) / "jump_target"
    path = folder / f"{platemap}.tsv"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*_platemap.tsv"))
        raise MetadataError(f"{path}: " + unknown_name_message("platemap", platemap, known))
    return path


@lru_cache(maxsize=64)
def platemap_wells(platemap: str, metadata_dir: str | Path | None = None) -> tuple[str, ...]:
    """The well_position column of a platemap (cached: the DAG asks for every plate's format)."""
    path = _platemap_file(platemap, metadata_dir)
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "well_position" not in table:
        raise MetadataError(f"{path}: no well_position column (columns: {list(table.columns)})")
    return tuple(table["well_position"])


def check_platemap_wells(platemap: str, plate_format: int, barcode: str, metadata_dir: str | Path | None = None) -> None:
    """Every well of the platemap must be a position of the plate's format."""
    outside = [w for w in platemap_wells(platemap, metadata_dir) if not in_plate_format(w, plate_format)]
    if outside:
        first, last = all_wells(plate_format)[0], all_wells(plate_format)[-1]
        raise MetadataError(f"{_platemap_file(platemap, metadata_dir)}: well {outside[0]!r} is not a position of a "
                            f"{plate_format}-well plate ({first} ... {last}; plate {barcode}, column {FORMAT_COLUMN} "
                            f"of {PLATES_FILE} or inferred){f' ({len(outside)} such wells)' if len(outside) > 1 else ''}")


@lru_cache(maxsize=16)
def perturbation_library(platemap: str, metadata_dir: str | Path | None = None) -> pd.DataFrame:
    """Per-well perturbation annotation of one platemap, with Metadata_ columns.

    Columns: Metadata_Well, Metadata_broad_sample, Metadata_pert_iname, Metadata_pert_type,
    Metadata_control_type, Metadata_gene, Metadata_target_list. Compound DMSO wells (empty
    broad_sample in the platemap) become broad_sample 'DMSO', control_type 'negcon'.
    """
    folder = _dir(metadata_dir) / "jump_target"
    platemap_file = folder / f"{platemap}.tsv"
    library_file = folder / f"{platemap.replace('_platemap', '_metadata')}.tsv"
    if not platemap_file.exists() or not library_file.exists():
        known = sorted(p.stem for p in folder.glob("*_platemap.tsv"))
        raise MetadataError(f"{platemap_file}: " + unknown_name_message("platemap", platemap, known))
    wells = pd.read_csv(platemap_file, sep="\t", dtype=str, keep_default_na=False)
    library = pd.read_csv(library_file, sep="\t", dtype=str, keep_default_na=False)
    is_compound = "target_list" in library.columns

    library = library.assign(
        control_type=library["control_type"].replace({"NA": ""}),
        pert_iname=library["pert_iname"] if "pert_iname" in library else library["gene"],
        gene=library["gene"] if "gene" in library else "",
        target_list=(library["target_list"].replace({"NA": ""}) if is_compound else library["gene"]),
    )
    # Compound plates: an empty platemap cell is a DMSO well. Genetic plates: an untreated, empty well.
    library.loc[(library["control_type"] == NEGCON) & (library["broad_sample"].isin(["", "NA"])), "broad_sample"] = "DMSO"
    empty_well = "DMSO" if is_compound else EMPTY
    wells["broad_sample"] = wells["broad_sample"].replace({"": empty_well})
    if not is_compound:
        library = pd.concat(
            [library, pd.DataFrame([{"broad_sample": EMPTY, "pert_iname": EMPTY, "pert_type": EMPTY,
                                     "control_type": EMPTY, "gene": "", "target_list": ""}])],
            ignore_index=True,
        )
    merged = wells.merge(library, on="broad_sample", how="left", validate="many_to_one")
    unmatched = merged.loc[merged["pert_type"].isna(), "broad_sample"].unique()
    if len(unmatched):
        raise MetadataError(f"{platemap_file}: broad_sample(s) not in {library_file.name}: {list(unmatched)[:5]}")
    table = pd.DataFrame(
        {
            "Metadata_Well": merged["well_position"],
            "Metadata_broad_sample": merged["broad_sample"],
            "Metadata_pert_iname": merged["pert_iname"],
            "Metadata_pert_type": merged["pert_type"],
            "Metadata_control_type": merged["control_type"],
            "Metadata_gene": merged["gene"],
            "Metadata_target_list": merged["target_list"],
        }
    )
    return table.replace({"": None}).sort_values("Metadata_Well").reset_index(drop=True)


def plate_layout(barcode: str, metadata_dir: str | Path | None = None) -> pd.DataFrame:
    """Every well of a plate with its perturbation and the plate's condition (Metadata_ columns)."""
    plate = plate_info(barcode, metadata_dir)
    layout = perturbation_library(plate.platemap, metadata_dir).copy()
    layout.insert(0, "Metadata_Plate", plate.barcode)
    layout["Metadata_modality"] = plate.modality
    layout["Metadata_cell_type"] = plate.cell_type
    layout["Metadata_timepoint"] = plate.timepoint
    layout["Metadata_plate_group"] = plate.group
    layout["Metadata_Batch"] = plate.batch
    layout["Metadata_Plate_Map_Name"] = plate.platemap
    return layout


def target_genes(target_list: str | None) -> set[str]:
    """'A|B|C' -> {'A','B','C'}; empty for None/NaN."""
    if target_list is None or (isinstance(target_list, float) and pd.isna(target_list)):
        return set()
    return {gene for gene in str(target_list).split("|") if gene}


def select_wells(
    layout: pd.DataFrame,
    wells: str | list[str] = "all",
    genes: list[str] | None = None,
    negcon_wells: int | None = None,
) -> list[str]:
    """Wells of one plate to process.

    `wells` ('all' or names) is applied first. `genes`, when given, keeps only perturbations that
    touch those genes (compounds targeting one of them, their CRISPR guides, their ORFs) plus
    negative controls; `negcon_wells` caps the negative controls at the first N in plate order
    (a targeted workstation subset that keeps every retrieval task scorable).
    """
    chosen = layout if wells == "all" else layout[layout["Metadata_Well"].isin(set(wells))]
    if genes:
        wanted = set(genes)
        touches = chosen["Metadata_target_list"].map(lambda t: bool(target_genes(t) & wanted))
        is_negcon = chosen["Metadata_control_type"] == NEGCON
        chosen = chosen[touches | is_negcon]
    if negcon_wells is not None:
        negcon = chosen[chosen["Metadata_control_type"] == NEGCON]
        chosen = chosen.drop(negcon.index[negcon_wells:])
    order = {well: i for i, well in enumerate(all_wells())}  # a 96-well plate's wells keep this order too
    return sorted(chosen["Metadata_Well"], key=order.__getitem__)
