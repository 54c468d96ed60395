"""The whole method: describe (stage 1), edit (stage 2), evaluate and decide (stage 3).

    import zsharm
    result = zsharm.harmonize("composite.png", "mask.png")     # SD 2 base, the VLM, the authors' evaluator:
                                                                # 2 VLM descriptions, up to 10 iterations
    harmonizer = zsharm.Harmonizer()                            # the models loaded once, for many images
    result = harmonizer("composite.png", "mask.png", source="cat bright", target="cat winter dull")
    result.picture, result.image, result.loop.history           # history: every score and decision
    Harmonizer(evaluator=None)                                  # no stage 3: a fixed number of iterations

The decision loop runs at work size; the final, best-scoring image is carried to the input's resolution once.
The VLM is released as soon as its descriptions are made (and again after a Regenerate), before Stable
Diffusion needs the memory.
"""

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from zsharm.config import DEFAULT_MODEL, HarmonizeConfig
from zsharm.errors import ZsharmError
from zsharm.io.pictures import Picture

if TYPE_CHECKING:  # stage 2 imports torch: loaded when work starts, so `zsharm harmonize --help` is instant
    from zsharm.edit.iteration import WorkIteration
    from zsharm.decide.loop import LoopResult


@dataclass
class HarmonizeResult:
    image: Image.Image       # 8-bit RGB view at the input's size
    picture: Picture         # the input's size, mode and depth; background bit-identical
    work_image: Image.Image  # the kept (best-scoring, or last) image at work size
    loop: "LoopResult"        # per-iteration descriptions, scores, decisions
    iterations: list         # every stage-2 iteration run (WorkIteration), in order

    @property
    def last_iteration(self) -> "WorkIteration | None":
        return self.iterations[-1] if self.iterations else None


def check_candidates(n_candidates, evaluator) -> None:
    """A number of candidate descriptions that can be honoured: at least 1, and more only with an evaluator."""
    if n_candidates is not None and n_candidates < 1:
        raise ZsharmError(f"the number of candidate descriptions must be at least 1, got {n_candidates}")
    if n_candidates is not None and n_candidates > 1 and evaluator is None:
        raise ZsharmError(f"{n_candidates} candidate descriptions need the evaluator to choose among them "
                          f"(without it only the first is used)")


class Harmonizer:
    """All three stages with their models loaded once; call it on (image, mask).

    evaluator: "auto" (the default: the model's own evaluator where it ships one, as the toy prior does, else
    "authors"), "authors" (their bestModel.pth, fetched once), a checkpoint path, an Evaluator, or
    None for no stage 3 (a fixed number of iterations with the first description). n_candidates: descriptions
    asked of stage 1 (default 2, as the authors; 1 without an evaluator, which would use only the first), and
    the most taken from a caption line. How each blend is scored is `config.evaluator_scoring` (the paper's:
    saved as a quality-75 JPEG and re-read, with the soft mask of the mask file; the fast schedule's: in
    memory); `rule` is stage 3's decision rule (zsharm.decide.rule.decide, the paper's, by default).
    """

    def __init__(self, model=DEFAULT_MODEL, config: HarmonizeConfig = None,
                 evaluator="auto", describer=None, device=None, dtype=None, pipe=None, pidinet=None,
                 progress: bool = True, n_candidates: int = None, rule=None):
        from zsharm.models import load_pipeline, model_companions, prepare_pipeline
        from zsharm.validate import check_device
        self.model = model if pipe is None else getattr(pipe, "name_or_path", None)
        companions = model_companions(self.model)
        # the values the model was made for (the toy prior's 128 px), unless the caller gave a config
        self.config = config or HarmonizeConfig(**companions.get("config", {}))
        if evaluator == "auto":
            evaluator = str(companions.get("evaluator") or "authors")
        if pipe is None:
            check_device(device, self.config.dtype if self.config.dtype != "auto" else None)
        check_candidates(n_candidates, evaluator)
        if isinstance(evaluator, (str, os.PathLike)):  # first: a small download that may fail, before SD's
            from zsharm.decide.evaluator import load_evaluator
            evaluator = load_evaluator(evaluator, device=device)
        if dtype is None:
            dtype = self.config.torch_dtype(device)
        self.pipe = (prepare_pipeline(pipe) if pipe is not None else
                     load_pipeline(model, device=device, dtype=dtype, progress=progress))
        self.evaluator, self.describer, self.pidinet, self.progress = evaluator, describer, pidinet, progress
        self.n_candidates = n_candidates
        from zsharm.decide.rule import decide
        self.rule = rule or decide

    def __call__(self, image, mask, source: str = None, target: str = None, candidates=None,
                 iterations: int = None, history_dir=None, name: str = None) -> HarmonizeResult:
        """mask: a path (its soft values, read as the authors read them, are what the evaluator sees), an array
        (bool, or soft values in [0, 1] / uint8) at the image's size, or a GivenMask already read
        (zsharm.io.masks.read_mask_once: the file is not read again)."""
        from zsharm.edit.iteration import at_work_size, finish, iterate_at_work_size
        from zsharm.decide.loop import DecisionLoop
        from zsharm.decide.scoring import score_mask
        from zsharm.validate import check_inputs, check_prompts
        from zsharm.io.masks import read_pair_once
        check_prompts(source, target, getattr(self.pipe, "tokenizer", None))
        for candidate in candidates or ():  # a caption file's prompts pass the same check as typed ones
            check_prompts(*_prompts_of(candidate), getattr(self.pipe, "tokenizer", None))
        picture, given = read_pair_once(image, mask)  # the one read of the mask: the evaluator's view too
        picture, mask = check_inputs(picture, given, self.config)
        cfg = self.config
        start, mask_work = at_work_size(picture, mask, cfg)
        from_vlm = source is None and not candidates
        candidates = self._candidates(picture, mask, source, target, candidates, name)
        runs = []

        def step(current, src, tgt):
            runs.append(iterate_at_work_size(self.pipe, current, mask_work, src, tgt, cfg, progress=self.progress,
                                             pidinet=self.pidinet))
            return runs[-1].work_image

        regenerate = self._regenerator(picture, mask, name) if from_vlm else None
        stage3 = DecisionLoop(self.evaluator, rule=self.rule, scoring=cfg.evaluator_scoring,
                              iterations=iterations, progress=self.progress)
        seen = score_mask(given, mask) if self.evaluator is not None else None
        loop = stage3.run(start, mask_work, candidates, step, score_mask=seen, regenerate=regenerate,
                          history_dir=history_dir, about={"schedule": cfg.schedule, "config": cfg.to_dict()})
        final = finish(picture, mask, start, loop.image, cfg)
        return HarmonizeResult(image=final.to_pil_rgb8(), picture=final, work_image=loop.image, loop=loop,
                               iterations=runs)

    def _regenerator(self, picture, mask, name):
        """Stage 1 asked again for a description unlike those tried (None when it has no new one); the VLM is
        released again before stage 2 goes on."""
        from zsharm.describe.describers import DescriptionExhaustedError

        def regenerate(tried):
            try:
                return self.describer.regenerate(picture.to_pil_rgb8(), mask, tried, name=name)
            except DescriptionExhaustedError:
                return None
            finally:
                _release(self.describer)
        return regenerate

    def _candidates(self, picture, mask, source, target, candidates, name):
        from zsharm.describe.description import Description
        wanted = self.n_candidates or (2 if self.evaluator is not None else 1)
        if candidates:
            given = [c if hasattr(c, "source") else Description.from_prompts(*c) for c in candidates]
            return given[:wanted] if self.n_candidates else given
        if (source is None) != (target is None):
            raise ZsharmError("give both source and target descriptions, or neither (then the VLM describes)")
        if source is not None:
            if self.n_candidates and self.n_candidates > 1:
                raise ZsharmError(f"{self.n_candidates} candidates asked for, but source and target give one")
            return [Description.from_prompts(source, target)]
        if self.describer is None:  # the model's own (the toy prior's), else the VLM
            from zsharm.describe.factory import get_describer
            self.describer = get_describer(model=self.model)
        try:
            return self.describer.describe(picture.to_pil_rgb8(), mask, n=wanted, name=name)
        finally:
            _release(self.describer)  # before Stable Diffusion needs the memory


def _prompts_of(candidate) -> tuple:
    return (candidate.source, candidate.target) if hasattr(candidate, "source") else tuple(candidate)


def _release(describer) -> None:
    release = getattr(describer, "release", None)  # a describer of the user's own may hold nothing
    if callable(release):
        release()


def harmonize(image, mask, source: str = None, target: str = None, *, model: str = DEFAULT_MODEL, pipe=None,
              config: HarmonizeConfig = None, evaluator="auto", describer=None, iterations: int = None,
              history_dir=None, progress: bool = True, pidinet=None, device=None) -> HarmonizeResult:
    """Harmonize `image`'s masked foreground in one call: `Harmonizer(...)(image, mask, ...)`, the same defaults.

    Give `pipe` to reuse a loaded pipeline. With `evaluator=None` it runs `iterations` fixed iterations (default
    1), each from the last one's blend; `history_dir` keeps every iteration's image, history.json and a contact
    sheet (zsharm.decide.loop). The image, mask and prompts are checked before any model is loaded."""
    from zsharm.validate import check_inputs, check_prompts
    check_prompts(source, target)
    check_inputs(image, mask, config or HarmonizeConfig())
    harmonizer = Harmonizer(model=model, pipe=pipe, config=config, evaluator=evaluator, describer=describer,
                            pidinet=pidinet, progress=progress, device=device)
    return harmonizer(image, mask, source=source, target=target, iterations=iterations, history_dir=history_dir)


def zsharm_method(model: str = DEFAULT_MODEL, config: HarmonizeConfig = None, iterations: int = 1,
                  source: str = None, target: str = None, device=None, dtype=None, describer=None,
                  progress: bool = True):
    """zsharm as one of the methods `zsharm evaluate` compares (zsharm.quality.compare.evaluate): a
    `(composite uint8, mask bool, sample) -> uint8` function running stage 2 for `iterations` iterations.

    The pipeline is loaded once, here. Descriptions: `source`/`target` if given, else the sample's first
    caption, else `describer.describe(image, mask, n=1)[0]` (when no describer is passed,
    zsharm.describe.factory.get_describer(model=model): the model's own, as the toy prior's, else the VLM).
    The quality package measures methods and never imports this module: the caller (the `evaluate` command,
    notebook 09) builds the method here and hands it over.
    """
    import numpy as np

    from zsharm.models import load_pipeline, model_config

    if (source is None) != (target is None):
        raise ZsharmError("give both --source and --target, or neither")
    config = config or HarmonizeConfig(**model_config(model))
    pipe = load_pipeline(model, device=device, dtype=dtype, progress=progress)
    state = {"describer": describer}

    def run(composite, mask, sample=None):
        image = Image.fromarray(composite)
        if source is not None:
            src, tgt = source, target
        elif sample is not None and sample.captions:
            src, tgt = sample.captions[0]
        else:
            if state["describer"] is None:
                from zsharm.describe.factory import get_describer
                state["describer"] = get_describer(model=model)
            description = state["describer"].describe(image, mask, n=1)[0]
            src, tgt = description.source, description.target
        result = harmonize(image, mask, src, tgt, pipe=pipe, config=config, evaluator=None,
                           iterations=iterations, progress=False)
        out = np.array(result.image.convert("RGB"))
        out[~mask] = composite[~mask]  # the contract of every method: the background is the input's
        return out

    run.wants_sample = True  # it reads each sample's caption
    return run
