"""`get_describer`: the describer a caller's options name (caption lines, given prompts, the model's own describer,
an endpoint or a local VLM)."""

from __future__ import annotations

from pathlib import Path

from zsharm.describe.describers import default_cache_dir, Describer, GivenDescriber, VLMDescriber
from zsharm.describe.description import Description, parse_caption_line
from zsharm.describe.instruction import VIEW_SIZE
from zsharm.describe.vlm import DEFAULT_VLM, OpenAIChatVLM, TransformersVLM
from zsharm.errors import ZsharmError


def get_describer(vlm=None, base_url=None, vlm_model=None, api_key_env: str = "ZSHARM_VLM_API_KEY", captions=None,
                  cache_dir=None, *, source: str | None = None, target: str | None = None, use_cache: bool = True,
                  max_attempts: int = 4, seed: int = 0, mask_style: str = "cutout", view_size: int = VIEW_SIZE,
                  timeout: float = 60.0, retries: int = 3, backoff: float = 1.0, device=None, dtype=None,
                  model=None, **backend_options) -> Describer:
    """The describer the arguments ask for, checked in this order:

    - `source` and `target` prompts, or `captions` (a Description, a list of them or of (source, target)
      pairs, or a caption-file line `src,tgt;src,tgt`): the user's descriptions, no model;
    - `model` (a model spec, as for zsharm.models.load_pipeline) that ships its own describer beside its weights
      (the toy prior: zsharm.describe.toy, statistics instead of a VLM), when no VLM option asks for another;
    - `base_url` + `vlm_model`: an OpenAI-compatible endpoint (key from `$api_key_env`; `timeout`, `retries`,
      `backoff`);
    - else a local transformers model: `vlm` (hub id or folder; default `zsharm.describe.vlm.DEFAULT_VLM`) on
      `device` in `dtype`.
    VLM descriptions are cached in `cache_dir` (default `default_cache_dir()`) unless `use_cache` is False.
    Extra keywords go to the backend (e.g. `generate_kwargs`, `max_new_tokens`, `temperature`).
    """
    if source is not None or target is not None:
        if source is None or target is None:
            raise ZsharmError("give both the source and the target prompt")
        return GivenDescriber([Description.from_prompts(source, target)])
    if captions is not None:
        return GivenDescriber(_given(captions))
    if model is not None and not (vlm or base_url or vlm_model):
        own = model_describer(model)
        if own is not None:
            return own
    if base_url:
        if vlm:
            raise ZsharmError("give --vlm (a local model) or --base-url with --vlm-model (an endpoint), not both")
        backend = OpenAIChatVLM(base_url, vlm_model, api_key_env=api_key_env, timeout=timeout,
                                 retries=retries, backoff=backoff, **backend_options)
    else:
        if vlm_model:
            raise ZsharmError("--vlm-model names a model behind --base-url; for a local model use --vlm")
        backend = TransformersVLM(vlm or DEFAULT_VLM, device=device, dtype=dtype, **backend_options)
    cache = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if use_cache else None
    return VLMDescriber(backend, cache, max_attempts=max_attempts, seed=seed, mask_style=mask_style,
                        view_size=view_size)


def model_describer(model) -> Describer | None:
    """The describer model `model` ships (its zsharm.json names one: the toy prior's), else None."""
    from zsharm.models import model_companions
    companions = model_companions(model)
    if "describer" not in companions:
        return None
    from zsharm.describe.toy import ToyDescriber
    return ToyDescriber.from_file(companions["describer"])


def check_describer_ready(describer) -> None:
    """What a describer needs before its first use is at hand (a local VLM's weights when downloads are off)."""
    check = getattr(getattr(describer, "backend", None), "check_available", None)
    if callable(check):
        check()


def _given(captions) -> list[Description]:
    if isinstance(captions, Description):
        return [captions]
    if isinstance(captions, str):
        return parse_caption_line(captions)
    out = []
    for item in captions:
        if isinstance(item, Description):
            out.append(item)
        elif isinstance(item, str):
            out.extend(parse_caption_line(item))
        else:
            source, target = item
            out.append(Description.from_prompts(source, target))
    return out
