"""paintbench: Cell Painting images to CPJUMP1 retrieval benchmarks."""

__version__ = "0.2.0"

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
"""The five fluorescent Cell Painting channels, in the order every tensor and table uses."""
