"""One list of citations in three places: src/paintbench/citations.py (the report's footer), CITATION.cff and
docs/citations.md must name the same DOIs and arXiv identifiers; the footer shows the version and every entry."""

from __future__ import annotations

import re

import yaml

from paintbench import __version__
from paintbench.citations import CITATIONS, footer_html
from tests.helpers import REPO

LINK = re.compile(r"\[(?:doi:)?(10\.\d{4,9}/\S+?|arXiv:\d{4}\.\d{4,5})\]")


def cff() -> dict:
    return yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))


def cff_links(reference: dict) -> set[str]:
    links = {str(reference["doi"])} if "doi" in reference else set()
    links |= {str(i["value"]) for i in reference.get("identifiers", []) if str(i["value"]).startswith("arXiv:")}
    return links


def test_citation_cff_is_paintbench_0_2_0():
    meta = cff()
    for key in ("cff-version", "message", "title", "authors", "version", "date-released", "license", "references"):
        assert key in meta, f"CITATION.cff lacks {key}"
    assert meta["cff-version"] == "1.2.0"
    assert str(meta["version"]) == __version__
    assert meta["license"] == "BSD-3-Clause"
    assert str(meta["date-released"]) == "2026-12-02"
    assert meta["authors"] == [{"name": "The paintbench developers"}]


def test_citations_name_the_same_works_everywhere():
    ours = [c.link for c in CITATIONS]
    assert len(ours) == len(set(ours)), "citations.py names a work twice"
    references = cff()["references"]
    in_cff = [cff_links(r) for r in references]
    assert all(len(links) == 1 for links in in_cff), f"every CITATION.cff reference needs one DOI or arXiv id: {in_cff}"
    in_cff = {links.pop() for links in in_cff}
    in_docs = set(LINK.findall((REPO / "docs" / "citations.md").read_text(encoding="utf-8")))
    assert set(ours) == in_cff, (f"CITATION.cff references differ from src/paintbench/citations.py: only in cff "
                                 f"{sorted(in_cff - set(ours))}, only in citations.py {sorted(set(ours) - in_cff)}")
    assert set(ours) == in_docs, (f"docs/citations.md differs from src/paintbench/citations.py: only in the doc "
                                  f"{sorted(in_docs - set(ours))}, only in citations.py {sorted(set(ours) - in_docs)}")


def test_report_footer_shows_version_and_every_citation():
    footer = footer_html()
    assert f"paintbench {__version__}" in footer
    for citation in CITATIONS:
        assert f"href='{citation.url}'" in footer, citation.short
        assert citation.url.startswith(("https://doi.org/10.", "https://arxiv.org/abs/"))


def test_report_page_ends_with_the_footer(tmp_path):
    import pandas as pd

    from paintbench.report.html import render
    from paintbench.report.inputs import RunFiles
    from paintbench.report.summary import COLUMNS, typed

    page = render(typed(pd.DataFrame(columns=COLUMNS)), tmp_path, [], RunFiles([], []), str(tmp_path), "a: 1",
                  {"python": "3"})
    assert page.endswith(footer_html() + "</body></html>")
