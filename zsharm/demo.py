"""The demo composite shipped inside the package (zsharm/assets/demo: composite.png, mask.png, caption.txt), so
`zsharm figures` and `zsharm ablate` run from a plain wheel install, with no checkout. It is a copy of the
checkout's data/demo, made by scripts/make_demo_data.py; tests/test_packaging.py keeps the two identical."""

import importlib.resources
from pathlib import Path


def demo_folder() -> Path:
    """The folder of the shipped demo. A wheel installs it as ordinary files, so it is a real path."""
    return Path(str(importlib.resources.files("zsharm") / "assets" / "demo"))
