"""The work paintbench stands on: one list, read by the HTML report's footer.

CITATION.cff (`references:`) and docs/citations.md list the same entries; tests/test_citations.py checks that the
three name the same DOIs and URLs.
"""

from __future__ import annotations

import html
from typing import NamedTuple

from paintbench import __version__


class Citation(NamedTuple):
    short: str  # what paintbench calls it
    reference: str  # authors, title, venue, year
    link: str  # a DOI (10.xxxx/...) or, for arXiv-only papers, an arXiv identifier (arXiv:NNNN.NNNNN)
    used_for: str  # where paintbench uses it

    @property
    def url(self) -> str:
        if self.link.startswith("arXiv:"):
            return f"https://arxiv.org/abs/{self.link.removeprefix('arXiv:')}"
        return f"https://doi.org/{self.link}"


CITATIONS: tuple[Citation, ...] = (
    Citation("CPJUMP1",
             "Chandrasekaran SN et al. Three million images and morphological profiles of cells treated with matched "
             "chemical and genetic perturbations. Nature Methods 21, 1114-1121 (2024).",
             "10.1038/s41592-024-02241-6",
             "the plates, platemaps and the three retrieval tasks and their statistic (protocol cpjump1)"),
    Citation("Cell Painting",
             "Bray MA et al. Cell Painting, a high-content image-based assay for morphological profiling using "
             "multiplexed fluorescent dyes. Nature Protocols 11, 1757-1774 (2016).",
             "10.1038/nprot.2016.105",
             "the assay: five channels (DNA, ER, RNA, AGP, Mito) the images carry"),
    Citation("CellProfiler 4",
             "Stirling DR et al. CellProfiler 4: improvements in speed, utility and usability. BMC Bioinformatics 22, "
             "433 (2021).",
             "10.1186/s12859-021-04344-9",
             "the cellprofiler feature set: segmentation and measurement of every cell"),
    Citation("pycytominer",
             "Serrano E et al. Reproducible image-based profiling with Pycytominer. Nature Methods (2025).",
             "10.1038/s41592-025-02611-8",
             "feature selection; the normalization and aggregation follow its definitions"),
    Citation("copairs",
             "Kalinin AA et al. A versatile information retrieval framework for evaluating profile strength and "
             "similarity. Nature Communications 16, 5181 (2025); preprint bioRxiv (2024), doi:10.1101/2024.04.01.587631.",
             "10.1038/s41467-025-60306-2",
             "mean average precision and its permutation p-values (protocol copairs)"),
    Citation("Cell Painting Gallery",
             "Weisbart E et al. Cell Painting Gallery: an open resource for image-based profiling. Nature Methods 21, "
             "1775-1777 (2024).",
             "10.1038/s41592-024-02399-z",
             "where the CPJUMP1 images, illumination functions and published profiles are read from (source s3)"),
    Citation("MAE",
             "He K et al. Masked Autoencoders Are Scalable Vision Learners. CVPR (2022).",
             "arXiv:2111.06377",
             "the vitmae feature set's pretraining objective"),
    Citation("DINO",
             "Caron M et al. Emerging Properties in Self-Supervised Vision Transformers. ICCV (2021).",
             "arXiv:2104.14294",
             "the vitdino feature set's pretraining objective"),
    Citation("DINOv2",
             "Oquab M et al. DINOv2: Learning Robust Visual Features without Supervision. TMLR (2024).",
             "arXiv:2304.07193",
             "the KoLeo regularizer of the DINO objective (vit.dino.koleo_weight)"),
    Citation("SimCLR",
             "Chen T et al. A Simple Framework for Contrastive Learning of Visual Representations. ICML (2020).",
             "arXiv:2002.05709",
             "the vitsimclr feature set's pretraining objective"),
    Citation("timm",
             "Wightman R. PyTorch Image Models. GitHub repository (2019).",
             "10.5281/zenodo.4414861",
             "the Vision Transformer encoders"),
    Citation("Snakemake",
             "Mölder F et al. Sustainable data analysis with Snakemake. F1000Research 10, 33 (2021).",
             "10.12688/f1000research.29032.2",
             "the workflow"),
)


def footer_html() -> str:
    """The report's footer: the paintbench version and the works it stands on, with links."""
    items = "".join(
        f"<li><b>{html.escape(c.short)}</b>: {html.escape(c.reference)} "
        f"<a href='{html.escape(c.url)}'>{html.escape(c.link if c.link.startswith('arXiv:') else 'doi:' + c.link)}</a></li>"
        for c in CITATIONS)
    return (f"<footer><h2>Citations</h2><p>Made with paintbench {html.escape(__version__)}. "
            "Please cite the work it stands on:</p>"
            f"<ul class='citations'>{items}</ul></footer>")
