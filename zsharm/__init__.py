"""zsharm: zero-shot image harmonization with a generative model prior (Chen et al., TMM 2025)."""

__version__ = "0.1.0"

from zsharm.errors import ZsharmError  # noqa: E402,F401
