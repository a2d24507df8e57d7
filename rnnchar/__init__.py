"""rnnchar: character-level recurrent language models on a NumPy autodiff graph."""

__version__ = "0.1.0"

from .graph import Graph, Mat
from .optim import SGD, Adam, RMSProp, clip_global_norm

__all__ = ["Graph", "Mat", "RMSProp", "Adam", "SGD", "clip_global_norm", "__version__"]
