"""Quiet libraries: the warnings and log lines diffusers, transformers and torch print on every load."""

import logging
import os
import warnings


def quiet_libraries():
    """Silence the warnings diffusers, transformers and torch print on every load: they say nothing a student
    can act on and push the notebook's own output off the screen. zsharm's own warnings stay."""
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        for module in ("diffusers", "transformers", "torch", "huggingface_hub", "kornia", "timm", "skimage"):
            warnings.filterwarnings("ignore", category=category, module=module)
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    for name in ("diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
