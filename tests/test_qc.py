"""Per-plate QC tables: stage fragments joined, wells left without a usable field counted, the missing-fraction rule."""

from __future__ import annotations

import pandas as pd
import pytest

from paintbench.atomic import write_table
from paintbench.qc import (WELL_DROPPED, TooManyMissingError, check_missing_fraction, plate_qc, qc_table, record,
                           summarize)


def test_plate_qc_joins_fragments_and_counts_dropped_wells(tmp_path):
    load_data = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": ["A01", "A01", "B02"], "Metadata_Site": [1, 2, 1]})
    write_table(qc_table([record("P1", "C03", 1, "download", "not in s3://bucket/x", channel="DNA"),
                          record("P1", "C03", 2, "download", "truncated: ...", channel="ER")]), tmp_path / "download.tsv")
    write_table(qc_table([record("P1", "B02", 1, "illum", "unreadable TIFF")]), tmp_path / "illum.tsv")
    write_table(qc_table(), tmp_path / "vit_crops.tsv")  # a stage that skipped nothing
    table = plate_qc([tmp_path / "download.tsv", tmp_path / "illum.tsv", tmp_path / "vit_crops.tsv"],
                     ["A01", "B02", "C03"], load_data)
    dropped = table[table["stage"] == "wells"]
    # C03 lost both fields at download, B02 its only field when illumination could not read it; A01 keeps two.
    assert sorted(dropped["Metadata_Well"]) == ["B02", "C03"] and (dropped["reason"] == WELL_DROPPED).all()
    assert len(table) == 5 and list(table.columns) == ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "channel",
                                                       "stage", "reason"]
    counts = summarize({"P1": table}).iloc[0]
    assert counts["missing or truncated images"] == 2 and counts["fields left out at download"] == 2
    assert counts["fields skipped (illum)"] == 1 and counts["wells dropped"] == 2


def test_missing_fraction_rule_names_the_plate():
    check_missing_fraction("P1", 100, 5, 0.05)  # at the limit: fine
    with pytest.raises(TooManyMissingError, match="plate P1: 6 of 100 requested fields \\(6.0%\\).*0.05"):
        check_missing_fraction("P1", 100, 6, 0.05)
    with pytest.raises(TooManyMissingError, match="plate P2: none of its 4 requested field"):
        check_missing_fraction("P2", 4, 4, 1.0)
