"""zsharm: zero-shot image harmonization with a generative model prior (Chen et al., TMM 2025).

    import zsharm
    result = zsharm.harmonize("composite.png", "mask.png")     # all three stages
    harmonizer = zsharm.Harmonizer()                            # models loaded once, for many images

The stages live in zsharm.describe (1), zsharm.edit (2) and zsharm.decide (3); `zsharm.Harmonizer` and
`zsharm.harmonize` are imported on first use, so `import zsharm` (and `zsharm --version`) loads no torch.
"""

from zsharm.errors import ZsharmError

__version__ = "0.1.0"
__all__ = ["Harmonizer", "HarmonizeConfig", "ZsharmError", "__version__", "harmonize"]

_LAZY = {"Harmonizer": "zsharm.harmonizer", "harmonize": "zsharm.harmonizer", "HarmonizeConfig": "zsharm.config"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zsharm' has no attribute {name!r}")
