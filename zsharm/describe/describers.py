"""Stage 1: imaging-condition descriptions of a composite, from a vision-language model or from the user.

The paper asks a VLM (Gemini, temperature 0.3) to look at the composite and its mask and answer in one fixed
format, with words from a closed dictionary (`zsharm.vocabulary`):

    OBJECT & (foreground) W W ... & (background) W W ...
    e.g. dog & (foreground) bright summer & (background) dull winter

Stage 2 then turns the source prompt `"dog bright summer"` (how the pasted object looks) into the target
prompt `"dog dull winter"` (how the background looks). This module:

- shows the model the composite and, as a second picture, the pasted object cut out on a neutral grey
  backdrop (`mask_view`). Why a second picture: anything drawn on the composite changes what the model must
  judge (a tint shifts the foreground's colour tone, an outline adds a colour and hides the seam where a
  mismatch shows). Why a cut-out rather than the bare black-and-white mask the authors sent: the model sees
  which object is meant and its true colours in one place, instead of having to line up a silhouette with
  the composite, which small models do poorly;
- writes the instruction (`INSTRUCTION`, `instruction()`);
- parses answers strictly (`parse_description`): anything but the format with dictionary words, at most one
  per list and a brightness word on each side, is refused, so prose, unknown words and instructions that
  text inside the picture may smuggle in never reach the diffusion prompts;
- asks again for malformed answers (up to a limit, then a one-line error naming the image and the last
  answer), asks for several distinct candidates (2 by default, as the authors), and for a new one different
  from those tried ("regenerate", which stage 3 calls);
- caches the descriptions on disk, keyed by image, mask, backend, model and prompt;
- also takes descriptions from the user: `Description.from_prompts(source, target)` and the authors' caption
  files (`read_caption_file`).

The description and its parser are in description.py, the instruction and the pictures the model is shown in
instruction.py, `get_describer` in factory.py.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from zsharm.cache import cache_dir
from zsharm.describe.captions import DescriptionFormatError
from zsharm.describe.description import Description, parse_description
from zsharm.describe.instruction import as_rgb, check_view_mask, instruction, MASK_STYLES, model_inputs, VIEW_SIZE
from zsharm.errors import ZsharmError
from zsharm.io.files import write_bytes_atomic


class DescriptionExhaustedError(ZsharmError):
    """No description new to the caller is left (every one the source gives was already tried)."""


# ----------------------------------------------------------------------------- describers


class Describer:
    """Gives candidate descriptions of a composite. `describe` for the first candidates, `regenerate` for
    one more, different from those tried."""

    name = "describer"

    def describe(self, image, mask, n: int = 2, exclude=(), name: str | None = None) -> list[Description]:
        raise NotImplementedError

    def regenerate(self, image, mask, tried, name: str | None = None) -> Description:
        """A description whose words differ from every one in `tried`; `DescriptionExhaustedError` if none."""
        return self.describe(image, mask, n=1, exclude=tried, name=name)[0]

    def release(self) -> None:
        """Free what the describer holds (a local VLM's weights) until it is asked again."""


def _as_descriptions(items) -> list[Description]:
    """Descriptions from Descriptions, (source, target) pairs or anything with .source and .target."""
    out = []
    for item in items:
        if isinstance(item, Description):
            out.append(item)
        elif hasattr(item, "source") and hasattr(item, "target"):
            out.append(Description.from_prompts(item.source, item.target))
        else:
            source, target = item
            out.append(Description.from_prompts(source, target))
    return out


class GivenDescriber(Describer):
    """Descriptions the user gave (prompts or a caption-file line), handed out in order."""

    name = "given"

    def __init__(self, descriptions):
        self.descriptions = list(descriptions)
        if not self.descriptions:
            raise ZsharmError("no descriptions given")

    def describe(self, image=None, mask=None, n: int = 2, exclude=(), name: str | None = None) -> list[Description]:
        exclude = _as_descriptions(exclude)
        fresh = [d for d in self.descriptions if not any(d.same_words(e) for e in exclude)]
        if not fresh:
            raise DescriptionExhaustedError(
                f"{name or 'image'}: all {len(self.descriptions)} given descriptions were tried")
        return fresh[:n]


class VLMDescriber(Describer):
    """Descriptions from a VLM backend (`zsharm.describe.vlm`), checked by `parse_description`, cached on disk.

    max_attempts: answers asked for each wanted description before giving up (malformed ones and repeats
    of a tried description both count). seed: the first answer's sampling seed; each attempt uses the next.
    cache_dir: where descriptions are kept (None: no cache).
    """

    def __init__(self, backend, cache_dir=None, max_attempts: int = 4, seed: int = 0, mask_style: str = "cutout",
                 view_size: int = VIEW_SIZE):
        if mask_style not in MASK_STYLES:
            raise ZsharmError(f"unknown mask style {mask_style!r}; choose one of {', '.join(MASK_STYLES)}")
        self.backend = backend
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_attempts = max(1, int(max_attempts))
        self.seed = int(seed)
        self.mask_style = mask_style
        self.view_size = int(view_size)
        self.name = f"{backend.kind}:{backend.model}"

    @property
    def prompt_version(self) -> str:
        """A hash of everything about the question: instruction text, mask style, picture size."""
        text = f"{instruction(style=self.mask_style)}\n{self.mask_style}\n{self.view_size}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def cache_key(self, image, mask) -> str:
        image = as_rgb(image)
        mask = check_view_mask(mask, image.size)
        digest = hashlib.sha256()
        for part in (f"{image.size}", image.tobytes(), f"{mask.shape}", np.packbits(mask).tobytes(),
                     self.backend.kind, self.backend.model, self.prompt_version):
            digest.update(part if isinstance(part, bytes) else part.encode())
            digest.update(b"\0")
        return digest.hexdigest()

    def describe(self, image, mask, n: int = 2, exclude=(), name: str | None = None) -> list[Description]:
        """Up to `n` distinct descriptions, none with the words of one in `exclude`.

        Cached descriptions of this image come first; the model is asked for the rest. Raises
        `DescriptionFormatError` when the model gives nothing well-formed in `max_attempts` answers and
        `DescriptionExhaustedError` when it only repeats tried ones; fewer than `n` comes with a warning.
        """
        label = name or getattr(image, "filename", "") or "image"
        image = as_rgb(image)
        mask = check_view_mask(mask, image.size)
        n = int(n)
        if n < 1:
            raise ZsharmError(f"the number of candidates must be at least 1, got {n}")
        exclude = _as_descriptions(exclude)
        key = self.cache_key(image, mask) if self.cache_dir is not None else None
        known = self._read_cache(key)
        found = [d for d in known if not any(d.same_words(e) for e in exclude)][:n]
        while len(found) < n:
            tried = list({d.words: d for d in exclude + known}.values())
            description, failure = self._ask_new(image, mask, tried, label)
            if description is None:
                if not found:
                    raise failure
                warnings.warn(f"{label}: only {len(found)} of {n} distinct descriptions ({failure})", stacklevel=2)
                break
            found.append(description)
            known.append(description)
            self._write_cache(key, known)
        return found

    def _ask_new(self, image, mask, tried, label):
        """(a description new to `tried`, None) or (None, the error that says why there is none)."""
        parts = model_inputs(image, mask, tried, self.mask_style, self.view_size)
        last_answer, last_reason, repeats = "", "", 0
        for attempt in range(self.max_attempts):
            last_answer = self.backend.ask(parts, seed=self.seed + attempt + 1009 * len(tried))
            try:
                description = parse_description(last_answer)
            except DescriptionFormatError as error:
                last_reason = str(error)
                continue
            if not any(description.same_words(t) for t in tried):
                return description, None
            repeats += 1
        if repeats:
            return None, DescriptionExhaustedError(
                f"{label}: {self.name} gave no description new to the {len(tried)} tried "
                f"in {self.max_attempts} answers")
        shown = last_answer if len(last_answer) <= 160 else last_answer[:157] + "..."
        return None, DescriptionFormatError(
            f"{label}: {self.name} gave no well-formed description in {self.max_attempts} answers; "
            f"last answer {shown!r} ({last_reason})")

    def _read_cache(self, key) -> list[Description]:
        if key is None:
            return []
        path = self.cache_dir / f"{key}.json"
        try:
            entries = json.loads(path.read_text())["descriptions"]
            # re-parsed, so an edited cache file cannot carry anything the parser would refuse
            return [parse_description(str(Description.from_json(entry))) for entry in entries]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError, ZsharmError):
            warnings.warn(f"ignoring the unreadable description cache {path}", stacklevel=3)
            return []

    def release(self) -> None:
        """Unload a local model (it loads again on the next question); an endpoint holds nothing."""
        unload = getattr(self.backend, "unload", None)
        if callable(unload):
            unload()

    def _write_cache(self, key, descriptions) -> None:
        if key is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        record = {"backend": self.backend.kind, "model": self.backend.model, "prompt_version": self.prompt_version,
                  "descriptions": [d.to_json() for d in descriptions]}
        write_bytes_atomic(self.cache_dir / f"{key}.json", json.dumps(record, indent=1).encode("utf-8"))


def default_cache_dir() -> Path:
    """`descriptions/` in the zsharm cache (zsharm.cache.cache_dir)."""
    return cache_dir("descriptions", create=False)
