"""Build the paintbench CellProfiler pipelines (analysis.cppipe, illum.cppipe) with the CellProfiler API.

Run with the CellProfiler venv's python (a harmless "MySQL could not be loaded" traceback prints):
    .venvs/cellprofiler/bin/python scripts/make_cppipe.py [--out-dir config/cellprofiler]

Building the pipelines in code, rather than editing .cppipe text by hand, means every setting is
checked by the module that owns it and the file is written in the text format CellProfiler 5 reads
back. The committed .cppipe files are the artifacts: open them in the GUI, or replace them with
your own pipelines that read the same LoadData columns and write the same CSV tables.
config/cellprofiler/README.md explains the settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")

import cellprofiler_core.preferences as prefs

prefs.set_headless()  # no wx and no Java: building modules needs neither

# ruff: noqa: E402  (the imports below must follow set_headless)
from cellprofiler.modules.correctilluminationapply import CorrectIlluminationApply
from cellprofiler.modules.correctilluminationcalculate import CorrectIlluminationCalculate
from cellprofiler.modules.exporttospreadsheet import ExportToSpreadsheet
from cellprofiler.modules.identifyprimaryobjects import IdentifyPrimaryObjects
from cellprofiler.modules.identifysecondaryobjects import IdentifySecondaryObjects
from cellprofiler.modules.identifytertiaryobjects import IdentifyTertiaryObjects
from cellprofiler.modules.measurecolocalization import MeasureColocalization
from cellprofiler.modules.measuregranularity import MeasureGranularity
from cellprofiler.modules.measureimagequality import MeasureImageQuality
from cellprofiler.modules.measureobjectintensity import MeasureObjectIntensity
from cellprofiler.modules.measureobjectintensitydistribution import MeasureObjectIntensityDistribution
from cellprofiler.modules.measureobjectneighbors import MeasureObjectNeighbors
from cellprofiler.modules.measureobjectsizeshape import MeasureObjectSizeShape
from cellprofiler.modules.measuretexture import MeasureTexture
from cellprofiler.modules.saveimages import SaveImages
from cellprofiler_core.modules.loaddata import LoadData
from cellprofiler_core.pipeline import Pipeline

# LoadData columns: FileName_Orig<Ch>/PathName_Orig<Ch> (both pipelines) and
# FileName_Illum<Ch>/PathName_Illum<Ch> (analysis), plus Metadata_Plate/Well/Site.
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
OBJECTS = ["Nuclei", "Cells", "Cytoplasm"]
CORR = [f"Corr{c}" for c in CHANNELS]
ORIG = [f"Orig{c}" for c in CHANNELS]


def names(items: list[str]) -> str:
    """List settings (images, objects) take CellProfiler's ', '-joined text, not a Python list."""
    return ", ".join(items)


def configure(owner, **values):
    """Set settings by attribute name; the setting itself validates and converts each value."""
    for name, value in values.items():
        getattr(owner, name).value = value
    return owner


def groups(module, attribute: str, add_method: str, count: int) -> list:
    """The first `count` repeated setting groups of a module, adding groups it lacks."""
    while len(getattr(module, attribute)) < count:
        getattr(module, add_method)()
    return getattr(module, attribute)[:count]


def load_data(group_by_plate: bool = False) -> LoadData:
    """The CSV is given on the command line (--data-file overrides the file named here).

    Rescale: uint16 TIFFs become 0-1 floats by their bit depth; .npy illumination functions
    are never rescaled by CellProfiler, so they divide the images as saved.
    """
    m = configure(LoadData(), csv_directory="Default Input Folder|", csv_file_name="load_data.csv",
                  wants_images=True, rescale=True, image_directory="Default Input Folder|")
    if group_by_plate:  # one illumination function per plate even if the CSV holds several
        configure(m, wants_image_groupings=True, metadata_fields="Plate")
    return m


def correct_illumination() -> CorrectIlluminationApply:
    """Corr<Ch> = Orig<Ch> / Illum<Ch>, clipped to 0-1."""
    m = CorrectIlluminationApply()
    for ch, g in zip(CHANNELS, groups(m, "images", "add_image", len(CHANNELS))):
        configure(g, image_name=f"Orig{ch}", corrected_image_name=f"Corr{ch}",
                  illum_correct_function_image_name=f"Illum{ch}", divide_or_subtract="Divide")
    return m


def identify_nuclei() -> IdentifyPrimaryObjects:
    """Nuclei on CorrDNA, sized for real CPJUMP1 fields (10-75 px) and synthetic ones (14-24 px)."""
    m = configure(
        IdentifyPrimaryObjects(), x_name="CorrDNA", y_name="Nuclei", size_range=(10, 80),
        exclude_size=True,  # drops debris and big out-of-focus blobs, as the consortium does
        exclude_border_objects=True,  # cut nuclei bias shape and intensity features
        # Shape/Shape: touching nuclei are convex blobs split at the neck; intensity maxima
        # over-split textured real nuclei (chromatin spots) in testing.
        unclump_method="Shape", watershed_method="Shape",
        # Automatic declumping sizes follow the minimum diameter (10 px -> 6.7 px) and split two
        # large real nuclei of the test crop; 10/10 split none, while the 10 px size floor still
        # keeps small synthetic nuclei.
        automatic_smoothing=False, smoothing_filter_size=10,
        automatic_suppression=False, maxima_suppression_size=10,
        fill_holes="After both thresholding and declumping",
        use_advanced=True,  # without it CellProfiler ignores all of the settings above
    )
    configure(m.threshold, threshold_scope="Global", global_operation="Minimum Cross-Entropy",
              threshold_smoothing_scale=1.3488, threshold_correction_factor=1.0, threshold_range=(0.0, 1.0))
    return m


def identify_cells() -> IdentifySecondaryObjects:
    """Cells grown from Nuclei over CorrRNA by propagation (watershed with a distance penalty)."""
    m = configure(IdentifySecondaryObjects(), x_name="Nuclei", y_name="Cells", method="Propagation",
                  image_name="CorrRNA", regularization_factor=0.05, fill_holes=True, wants_discard_edge=False)
    # Three-class Otsu on log intensities, middle class to foreground: dim cytoplasm sits between
    # background and bright nucleoli. Without the log transform real cells came out about half
    # their consortium area; with it 9 of 10 matched (IoU >= 0.5).
    configure(m.threshold, threshold_scope="Global", global_operation="Otsu", two_class_otsu="Three classes",
              assign_middle_to_foreground="Foreground", log_transform=True, threshold_smoothing_scale=1.3488)
    return m


def measurements(texture_scales: list[int], gray_levels: int = 256, granular_spectrum: int = 16,
                 texture_objects: list[str] | tuple[str, ...] = tuple(OBJECTS)) -> list:
    """The measurement modules, all on the illumination-corrected channels unless noted."""
    objects, corr = names(OBJECTS), names(CORR)
    texture = configure(MeasureTexture(), images_list=corr, objects_list=names(texture_objects), gray_levels=gray_levels,
                        images_or_objects="Objects")  # whole-image texture is not profiled
    for scale, g in zip(texture_scales, groups(texture, "scale_groups", "add_scale", len(texture_scales))):
        g.scale.value = scale
    return [
        configure(MeasureObjectIntensity(), images_list=corr, objects_list=objects),
        # Zernike shape features are in the consortium profiles; "advanced" moments are not.
        configure(MeasureObjectSizeShape(), objects_list=objects, calculate_zernikes=True, calculate_advanced=False),
        texture,
        # CellProfiler's default spectrum (16 steps, 0.25 subsampling) keeps the openings affordable.
        configure(MeasureGranularity(), images_list=corr, wants_objects=True, objects_list=objects,
                  subsample_size=0.25, image_sample_size=0.25, element_size=10, granular_spectrum_length=granular_spectrum),
        # Costes' automatic thresholds were ~75% of this module's time (about 20 s per 1080 px field
        # on one core, even "Faster"); every other colocalization metric is kept.
        configure(MeasureColocalization(), images_list=corr, objects_list=objects, images_or_objects="Both",
                  threshold_percentage=15.0, do_all=False, do_corr_and_slope=True, do_manders=True,
                  do_rwc=True, do_overlap=True, do_costes=False),
        radial_distribution(),
        neighbors("Cells", "Adjacent"),
        neighbors("Nuclei", "Within a specified distance", 5),
        image_quality(),
    ]


def radial_distribution() -> MeasureObjectIntensityDistribution:
    """Four scaled radial bins per object, centred on each object's most interior point."""
    m = configure(MeasureObjectIntensityDistribution(), images_list=names(CORR), wants_zernikes="None")
    for obj, g in zip(OBJECTS, groups(m, "objects", "add_object", len(OBJECTS))):
        configure(g, object_name=obj, center_choice="These objects")
    configure(m.bin_counts[0], wants_scaled=True, bin_count=4, maximum_radius=100)
    return m


def neighbors(objects: str, method: str, distance: int = 5) -> MeasureObjectNeighbors:
    # Border-discarded objects still count as neighbours: they are real cells next door.
    return configure(MeasureObjectNeighbors(), object_name=objects, neighbors_name=objects,
                     distance_method=method, distance=distance, wants_excluded_objects=True)


def image_quality() -> MeasureImageQuality:
    """Focus, saturation, intensity and threshold QC on the raw channels (ImageQuality_*_Orig<Ch>)."""
    m = configure(MeasureImageQuality(), images_choice="Select...")
    configure(m.image_groups[0], image_names=names(ORIG), check_blur=True,
              include_local_blur=False,  # per-window focus maps are not profiled
              check_saturation=True, check_intensity=True, calculate_threshold=True,
              use_all_threshold_methods=False)
    return m


def export_to_spreadsheet() -> ExportToSpreadsheet:
    """Image.csv, Nuclei.csv, Cells.csv, Cytoplasm.csv in the default output folder (-o)."""
    m = configure(ExportToSpreadsheet(), delimiter='Comma (",")', directory="Default Output Folder|",
                  wants_prefix=False,
                  wants_overwrite_without_warning=True,  # a rerun job must not stop to ask
                  add_metadata=True,  # Metadata_Plate/Well/Site in every object table
                  nan_representation="NaN", wants_everything=False)
    tables = ["Image", *OBJECTS]
    for name, g in zip(tables, groups(m, "object_groups", "add_object_group", len(tables))):
        configure(g, name=name, previous_file=False, wants_automatic_file_name=False, file_name=f"{name}.csv")
    return m


def segmentation() -> list:
    """LoadData, illumination correction and the three object sets, shared by both analysis pipelines."""
    return [
        load_data(),
        correct_illumination(),
        identify_nuclei(),
        identify_cells(),
        configure(IdentifyTertiaryObjects(), secondary_objects_name="Cells", primary_objects_name="Nuclei",
                  subregion_objects_name="Cytoplasm",
                  shrink_primary=True),  # keeps a ring so no cytoplasm is empty
    ]


def analysis_pipeline(texture_scales: list[int], gray_levels: int = 256, granular_spectrum: int = 16,
                      texture_objects: list[str] | tuple[str, ...] = tuple(OBJECTS)) -> Pipeline:
    return build([
        *segmentation(),
        *measurements(texture_scales, gray_levels, granular_spectrum, texture_objects),
        export_to_spreadsheet(),
    ])


# The offline demo's variant (analysis_demo.cppipe). On its 160 px fields (~20 cells), CellProfiler's time goes
# on bookkeeping, not image processing. Every measurement column costs ~2-4 ms per field to store in the
# HDF5-backed measurements and to read back for ExportToSpreadsheet. Texture, granularity and neighbours also
# add five image-level summaries per object column. The previous demo settings (this pipeline with texture at
# one scale on nuclei and cells, 32 gray levels, 8 granularity steps) stored ~5,200 measurements per field:
# 11.8 s per field on one core. Per module: texture 4.5 s, granularity 1.3, colocalization 1.0, intensity 0.95,
# radial distribution 0.75, size/shape with Zernike 0.6, plus ~2 s of export; start-up is ~5 s per process.
# Only intensity and size/shape without Zernike are kept, on Nuclei and Cells: 1.3 s of CPU per field in the
# modules (0.8 intensity, 0.2 size/shape), measured on a loaded machine. Cytoplasm is still identified, so
# Cytoplasm.csv exists with the Parent_Cells column the merge needs, but it gets no measurements of its own.
# On the demo this loses nothing. Its texture well medians were constant or nearly so (8-bit quantised dim
# channels), so feature selection dropped them. The demo's retrieval finds the planted answer as well as before:
# strong/weak/null mAP 0.90/0.47/0.30, against 0.79/0.40/0.29 with every family (the planted effects are
# intensity, size and intensity-spread shifts). Real profiling runs use analysis.cppipe.
DEMO_OBJECTS = ["Nuclei", "Cells"]


def demo_measurements() -> list:
    """Intensity (all five channels) and size/shape without Zernike moments, on Nuclei and Cells only."""
    objects = names(DEMO_OBJECTS)
    return [
        configure(MeasureObjectIntensity(), images_list=names(CORR), objects_list=objects),
        configure(MeasureObjectSizeShape(), objects_list=objects, calculate_zernikes=False, calculate_advanced=False),
    ]


def demo_analysis_pipeline() -> Pipeline:
    return build([*segmentation(), *demo_measurements(), export_to_spreadsheet()])


def illum_pipeline(filter_size: int) -> Pipeline:
    """Per plate and channel: mean of all images, median-filtered, divided by its robust minimum.

    Rescale "Yes" divides by the 2nd percentile and clips below it, so the function is >= 1 and
    division keeps intensities within 0-1. The median disk's radius is filter_size / 2.35.
    """
    calculate = [
        configure(CorrectIlluminationCalculate(), image_name=f"Orig{ch}", illumination_image_name=f"Illum{ch}",
                  intensity_choice="Regular", dilate_objects=False, rescale_option="Yes", each_or_all="All",
                  smoothing_method="Median Filter", automatic_object_width="Manually",
                  size_of_smoothing_filter=filter_size)
        for ch in CHANNELS
    ]
    # <Plate>_Illum<Ch>.npy, written after the last image of the plate (the function is complete).
    save = [
        configure(SaveImages(), save_image_or_figure="Image", image_name=f"Illum{ch}",
                  file_name_method="Single name", single_file_name=f"\\g<Plate>_Illum{ch}", file_format="npy",
                  bit_depth="32-bit floating point", pathname="Default Output Folder|", overwrite=True,
                  when_to_save="Last cycle")
        for ch in CHANNELS
    ]
    return build([load_data(group_by_plate=True), *calculate, *save])


def build(modules: list) -> Pipeline:
    pipeline = Pipeline()
    for number, module in enumerate(modules, start=1):
        module.set_module_num(number)  # 1-based, set before add_module
        pipeline.add_module(module)
    return pipeline


def save(pipeline: Pipeline, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")  # a running job never reads a half-written pipeline
    with open(tmp, "w") as fp:
        pipeline.dump(fp, save_image_plane_details=False)
    tmp.replace(path)
    print(f"wrote {path} ({len(pipeline.modules())} modules)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "config/cellprofiler")
    parser.add_argument("--texture-scales", type=int, nargs="+", default=[3, 5],
                        help="Haralick distances in px; each scale costs ~3.5 s per field (default 3 5)")
    parser.add_argument("--illum-filter-size", type=int, default=500,
                        help="median filter size in px; ~half the field width (500 for 1080 px fields)")
    args = parser.parse_args(argv)
    save(analysis_pipeline(args.texture_scales), args.out_dir / "analysis.cppipe")
    # The offline demo's cheap variant: intensity and size/shape on Nuclei and Cells (see demo_measurements).
    save(demo_analysis_pipeline(), args.out_dir / "analysis_demo.cppipe")
    save(illum_pipeline(args.illum_filter_size), args.out_dir / "illum.cppipe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
