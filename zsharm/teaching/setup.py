"""What every notebook needs first: where the checkout is, whether the model is a tiny random one, and its tokenizer."""


from pathlib import Path

from zsharm.errors import ZsharmError
from zsharm.models import TINY_SPECS, tiny_pipeline_dir

# ----------------------------------------------------------------------------- where things are

def repo_root(start=None) -> Path:
    """The checkout's root: the first folder at or above `start` (default: the working folder) holding
    pyproject.toml. Notebooks find `data/` through it, wherever they are run from."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "zsharm").is_dir():
            return folder
    raise ZsharmError(f"no zsharm checkout (a folder with pyproject.toml) at or above {here}")


def is_tiny(model: str) -> bool:
    """Whether a model spec names one of the tiny random-weight test models."""
    return str(model) in TINY_SPECS


TINY_NOTE = ("The tiny model is random: shapes and code paths, not pictures, are what to look at here. "
             "Set ZSHARM_MODEL to stabilityai/stable-diffusion-2-base (a GPU helps) to see the real thing.")


def load_tokenizer(model: str):
    """The CLIP tokenizer of a model spec (hub id, diffusers folder or tiny) without loading its weights."""
    from transformers import CLIPTokenizer
    source = str(tiny_pipeline_dir(model)) if model in TINY_SPECS else str(model)
    try:
        return CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
    except OSError as exc:
        raise ZsharmError(f"no tokenizer for model {model!r}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc


