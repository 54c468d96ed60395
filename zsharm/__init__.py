"""zsharm: zero-shot image harmonization with a generative model prior (Chen et al., TMM 2025)."""

from zsharm.errors import ZsharmError

__version__ = "0.1.0"
__all__ = ["ZsharmError", "__version__"]
