"""Build the paintbench CellProfiler pipelines (analysis.cppipe, illum.cppipe) with the CellProfiler API.

Run with the CellProfiler venv's python:
    .venvs/cellprofiler/bin/python scripts/make_cppipe.py [--out-dir config/cellprofiler]

Building the pipelines in code, rather than editing .cppipe text by hand, means every setting is
validated by the module that owns it and the file is written in the exact text format CellProfiler
5 reads back. The committed .cppipe files are the artifacts: open them in the GUI, or replace them
with your own pipelines that read the same LoadData columns and write the same CSV tables.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")

import cellprofiler_core.preferences as prefs

prefs.set_headless()  # no wx, no Java: the modules below need neither to be configured

from cellprofiler_core.modules.loaddata import LoadData  # noqa: E402
from cellprofiler_core.pipeline import Pipeline  # noqa: E402
from cellprofiler.modules.correctilluminationapply import CorrectIlluminationApply  # noqa: E402
from cellprofiler.modules.correctilluminationcalculate import CorrectIlluminationCalculate  # noqa: E402
from cellprofiler.modules.exporttospreadsheet import ExportToSpreadsheet  # noqa: E402
from cellprofiler.modules.identifyprimaryobjects import IdentifyPrimaryObjects  # noqa: E402
from cellprofiler.modules.identifysecondaryobjects import IdentifySecondaryObjects  # noqa: E402
from cellprofiler.modules.identifytertiaryobjects import IdentifyTertiaryObjects  # noqa: E402
from cellprofiler.modules.measurecolocalization import MeasureColocalization  # noqa: E402
from cellprofiler.modules.measuregranularity import MeasureGranularity  # noqa: E402
from cellprofiler.modules.measureimagequality import MeasureImageQuality  # noqa: E402
from cellprofiler.modules.measureobjectintensity import MeasureObjectIntensity  # noqa: E402
from cellprofiler.modules.measureobjectintensitydistribution import (  # noqa: E402
    MeasureObjectIntensityDistribution,
)
from cellprofiler.modules.measureobjectneighbors import MeasureObjectNeighbors  # noqa: E402
from cellprofiler.modules.measureobjectsizeshape import MeasureObjectSizeShape  # noqa: E402
from cellprofiler.modules.measuretexture import MeasureTexture  # noqa: E402
from cellprofiler.modules.saveimages import SaveImages  # noqa: E402

# Cell Painting channel names; LoadData columns are FileName_Orig<Ch>/PathName_Orig<Ch> and, for
# the analysis pipeline, FileName_Illum<Ch>/PathName_Illum<Ch>.
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
OBJECTS = ["Nuclei", "Cells", "Cytoplasm"]
CORR = [f"Corr{c}" for c in CHANNELS]


def names(items: list[str]) -> str:
    """List settings (images, objects) take CellProfiler's own ', '-joined text, not a Python list."""
    return ", ".join(items)


def add(pipeline: Pipeline, module) -> object:
    """Append a module (module numbers are 1-based and must be set before add_module)."""
    module.set_module_num(len(pipeline.modules()) + 1)
    pipeline.add_module(module)
    return module


def load_data(group_by_plate: bool = False) -> LoadData:
    """LoadData: the CSV itself is given on the command line (--data-file overrides the setting)."""
    m = LoadData()
    m.csv_directory.value = "Default Input Folder|"
    m.csv_file_name.value = "load_data.csv"
    m.wants_images.value = True
    # Rescale: uint16 TIFFs become 0-1 floats by their bit depth; .npy illum functions are never rescaled.
    m.rescale.value = True
    m.image_directory.value = "Default Input Folder|"  # PathName_ columns are absolute anyway
    if group_by_plate:
        m.wants_image_groupings.value = True
        m.metadata_fields.value = "Plate"
    return m


def correct_illumination() -> CorrectIlluminationApply:
    """Corr<Ch> = Orig<Ch> / Illum<Ch>; clipping to 0-1 keeps intensities comparable across plates."""
    m = CorrectIlluminationApply()
    for i, ch in enumerate(CHANNELS):
        if i > 0:
            m.add_image()
        g = m.images[i]
        g.image_name.value = f"Orig{ch}"
        g.corrected_image_name.value = f"Corr{ch}"
        g.illum_correct_function_image_name.value = f"Illum{ch}"
        g.divide_or_subtract.value = "Divide"
    return m


def identify_nuclei() -> IdentifyPrimaryObjects:
    """Nuclei on CorrDNA, sized for both real CPJUMP1 fields (10-75 px) and synthetic ones (14-24 px)."""
    m = IdentifyPrimaryObjects()
    m.x_name.value = "CorrDNA"
    m.y_name.value = "Nuclei"
    m.size_range.value = (10, 80)
    m.exclude_size.value = True  # drops debris and out-of-focus blobs, as the consortium does
    m.exclude_border_objects.value = True  # partial nuclei bias shape and intensity features
    m.unclump_method.value = "Shape"  # touching nuclei are convex blobs: split at the neck
    m.watershed_method.value = "Intensity"
    m.fill_holes.value = "After both thresholding and declumping"
    m.use_advanced.value = True
    t = m.threshold
    t.threshold_scope.value = "Global"
    t.global_operation.value = "Minimum Cross-Entropy"
    t.threshold_smoothing_scale.value = 1.3488
    t.threshold_correction_factor.value = 1.0
    t.threshold_range.value = (0.0, 1.0)
    return m


def identify_cells() -> IdentifySecondaryObjects:
    """Cells grown from Nuclei over CorrRNA by propagation (watershed with a distance penalty)."""
    m = IdentifySecondaryObjects()
    m.x_name.value = "Nuclei"
    m.y_name.value = "Cells"
    m.method.value = "Propagation"
    m.image_name.value = "CorrRNA"
    m.regularization_factor.value = 0.05
    m.fill_holes.value = True
    m.wants_discard_edge.value = False
    t = m.threshold
    t.threshold_scope.value = "Global"
    t.global_operation.value = "Otsu"
    t.two_class_otsu.value = "Three classes"
    # Dim cytoplasm is the middle class between background and bright perinuclear RNA.
    t.assign_middle_to_foreground.value = "Foreground"
    t.threshold_smoothing_scale.value = 1.3488
    return m


def identify_cytoplasm() -> IdentifyTertiaryObjects:
    m = IdentifyTertiaryObjects()
    m.secondary_objects_name.value = "Cells"
    m.primary_objects_name.value = "Nuclei"
    m.subregion_objects_name.value = "Cytoplasm"
    m.shrink_primary.value = True  # keeps a one-pixel ring so cytoplasm never has zero area
    return m


def measure_intensity() -> MeasureObjectIntensity:
    m = MeasureObjectIntensity()
    m.images_list.value = names(CORR)
    m.objects_list.value = names(OBJECTS)
    return m


def measure_size_shape() -> MeasureObjectSizeShape:
    m = MeasureObjectSizeShape()
    m.objects_list.value = names(OBJECTS)
    m.calculate_zernikes.value = True  # in the consortium profiles
    m.calculate_advanced.value = False  # spatial/inertia moments: many columns, little signal
    return m


def measure_texture(scales=(3, 5)) -> MeasureTexture:
    """Haralick features at 256 gray levels; objects only (whole-image texture is not profiled)."""
    m = MeasureTexture()
    m.images_list.value = names(CORR)
    m.objects_list.value = names(OBJECTS)
    m.gray_levels.value = 256
    m.images_or_objects.value = "Objects"
    for i, scale in enumerate(scales):
        if i >= len(m.scale_groups):
            m.add_scale()
        m.scale_groups[i].scale.value = scale
    return m


def measure_granularity() -> MeasureGranularity:
    """Granularity spectrum per object; subsampling 0.25 keeps the opening series affordable."""
    m = MeasureGranularity()
    m.images_list.value = names(CORR)
    m.wants_objects.value = True
    m.objects_list.value = names(OBJECTS)
    m.subsample_size.value = 0.25
    m.image_sample_size.value = 0.25
    m.element_size.value = 10
    m.granular_spectrum_length.value = 16
    return m


def measure_colocalization() -> MeasureColocalization:
    """Pairwise channel correlation within objects and across the image."""
    m = MeasureColocalization()
    m.images_list.value = names(CORR)
    m.objects_list.value = names(OBJECTS)
    m.images_or_objects.value = "Both"
    m.threshold_percentage.value = 15.0
    m.do_all.value = False
    m.do_corr_and_slope.value = True
    m.do_manders.value = True
    m.do_rwc.value = True
    m.do_overlap.value = True
    m.do_costes.value = True
    m.fast_costes.value = "Faster"  # the accurate Costes search costs seconds per pair and object set
    return m


def measure_radial_distribution() -> MeasureObjectIntensityDistribution:
    """Four scaled radial bins per object, centred on each object's own most interior point."""
    m = MeasureObjectIntensityDistribution()
    m.images_list.value = names(CORR)
    for i, obj in enumerate(OBJECTS):
        if i >= len(m.objects):
            m.add_object()
        m.objects[i].object_name.value = obj
        m.objects[i].center_choice.value = "These objects"
    b = m.bin_counts[0]
    b.wants_scaled.value = True
    b.bin_count.value = 4
    b.maximum_radius.value = 100
    m.wants_zernikes.value = "None"
    return m


def measure_neighbors(objects: str, method: str, distance: int = 5) -> MeasureObjectNeighbors:
    m = MeasureObjectNeighbors()
    m.object_name.value = objects
    m.neighbors_name.value = objects
    m.distance_method.value = method
    m.distance.value = distance
    m.wants_excluded_objects.value = True  # border-discarded nuclei are still real neighbours
    return m


def measure_image_quality() -> MeasureImageQuality:
    """Focus, saturation and intensity QC on the raw (uncorrected) channels, as in the JUMP profiles."""
    m = MeasureImageQuality()
    m.images_choice.value = "Select..."
    g = m.image_groups[0]
    g.image_names.value = names([f"Orig{c}" for c in CHANNELS])
    g.check_blur.value = True
    g.include_local_blur.value = False  # local focus score maps are not profiled
    g.check_saturation.value = True
    g.check_intensity.value = True
    g.calculate_threshold.value = True
    g.use_all_threshold_methods.value = False
    return m


def export_to_spreadsheet() -> ExportToSpreadsheet:
    """Image.csv, Nuclei.csv, Cells.csv, Cytoplasm.csv in the default output folder (-o)."""
    m = ExportToSpreadsheet()
    m.delimiter.value = 'Comma (",")'
    m.directory.value = "Default Output Folder|"
    m.wants_prefix.value = False
    m.wants_overwrite_without_warning.value = True  # reruns of a Snakemake job must not prompt
    m.add_metadata.value = True  # Metadata_Plate/Well/Site in every object table
    m.nan_representation.value = "NaN"
    m.wants_everything.value = False
    for i, name in enumerate(["Image", *OBJECTS]):
        if i >= len(m.object_groups):
            m.add_object_group()
        g = m.object_groups[i]
        g.name.value = name
        g.previous_file.value = False
        g.wants_automatic_file_name.value = False
        g.file_name.value = f"{name}.csv"
    return m


def analysis_pipeline() -> Pipeline:
    p = Pipeline()
    for module in [
        load_data(),
        correct_illumination(),
        identify_nuclei(),
        identify_cells(),
        identify_cytoplasm(),
        measure_intensity(),
        measure_size_shape(),
        measure_texture(),
        measure_granularity(),
        measure_colocalization(),
        measure_radial_distribution(),
        measure_neighbors("Cells", "Adjacent"),
        measure_neighbors("Nuclei", "Within a specified distance", 5),
        measure_image_quality(),
        export_to_spreadsheet(),
    ]:
        add(p, module)
    return p


def illum_calculate(ch: str, filter_size: int) -> CorrectIlluminationCalculate:
    """Mean over all images of the group, median-filtered, divided by its 2nd percentile (robust minimum)."""
    m = CorrectIlluminationCalculate()
    m.image_name.value = f"Orig{ch}"
    m.illumination_image_name.value = f"Illum{ch}"
    m.intensity_choice.value = "Regular"
    m.dilate_objects.value = False
    m.rescale_option.value = "Yes"  # "Yes" = divide by the robust minimum (2nd percentile)
    m.each_or_all.value = "All"
    m.smoothing_method.value = "Median Filter"
    m.automatic_object_width.value = "Manually"
    m.size_of_smoothing_filter.value = filter_size
    return m


def save_illum(ch: str) -> SaveImages:
    """<Plate>_Illum<Ch>.npy, written once the last image of the plate has been accumulated."""
    m = SaveImages()
    m.save_image_or_figure.value = "Image"
    m.image_name.value = f"Illum{ch}"
    m.file_name_method.value = "Single name"
    m.single_file_name.value = f"\\g<Plate>_Illum{ch}"
    m.file_format.value = "npy"
    m.bit_depth.value = "32-bit floating point"
    m.pathname.value = "Default Output Folder|"
    m.overwrite.value = True
    m.when_to_save.value = "Last cycle"
    return m


def illum_pipeline(filter_size: int) -> Pipeline:
    p = Pipeline()
    add(p, load_data(group_by_plate=True))
    for ch in CHANNELS:
        add(p, illum_calculate(ch, filter_size))
    for ch in CHANNELS:
        add(p, save_illum(ch))
    return p


def save(pipeline: Pipeline, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fp:
        pipeline.dump(fp, save_image_plane_details=False)
    print(f"wrote {path} ({len(pipeline.modules())} modules)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "config/cellprofiler")
    parser.add_argument("--illum-filter-size", type=int, default=500, help="median filter size (px) for 1080 px fields")
    args = parser.parse_args(argv)
    save(analysis_pipeline(), args.out_dir / "analysis.cppipe")
    save(illum_pipeline(args.illum_filter_size), args.out_dir / "illum.cppipe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
