"""Stage 2.3's loss terms: what null-text optimisation adds to its latent MSE, besides which nothing is fixed.

A term is an object made once per iteration from the input image and mask, then called on each decoded
prediction:

    term = factory(run, image, mask, pidinet)   # image: PIL RGB at work size; mask: bool at work size;
                                                # pidinet(): the edge detector, loaded on first call
    loss, parts = term(image01)                 # image01: 1 x 3 x h x w in [0, 1]; parts: floats for the records
    term.crop                                   # (y0, y1, x0, x1) latent box it reads, or None for the whole image

The configuration names the terms (`HarmonizeConfig.nulltext_terms`): a name of `NULLTEXT_TERMS` (config.py) or
"package.module:factory". The paper's edge loss is "edges" (zsharm.edit.nulltext.EdgeLoss).
"""

from __future__ import annotations

import importlib
from typing import Callable, Protocol

from zsharm.config import NULLTEXT_TERMS
from zsharm.errors import ZsharmError


class NullTextTerm(Protocol):
    crop: tuple | None

    def __call__(self, image01) -> tuple: ...


def resolve_term(name: str) -> Callable:
    """The factory a term name stands for, imported now (a typo is found before any model work)."""
    where = NULLTEXT_TERMS.get(name, name)
    module_name, _, attribute = str(where).partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ZsharmError(f"null-text loss term {name!r}: cannot import {where!r} ({error})") from None


def resolve_terms(config) -> list:
    return [resolve_term(name) for name in config.active_terms()]


def build_terms(run, image, mask, pidinet: Callable) -> list:
    """The configured terms, made for this iteration's input, in the configuration's order."""
    return [factory(run, image, mask, pidinet) for factory in resolve_terms(run.config)]
