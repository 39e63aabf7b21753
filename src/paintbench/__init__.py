"""paintbench: Cell Painting images to CPJUMP1 retrieval benchmarks."""

from paintbench.registry import CHANNELS

__version__ = "0.2.0"
__all__ = ["CHANNELS", "__version__"]
