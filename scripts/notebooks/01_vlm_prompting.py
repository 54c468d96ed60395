# %% [markdown]
# # 01 · Stage 1: asking a vision-language model for imaging conditions
#
# **What this notebook teaches.** How the method turns a picture into the two text prompts that drive the
# diffusion model: the closed dictionary of condition words, the instruction a vision-language model (VLM)
# receives, what it is shown, how its answer is parsed (and refused), how candidate descriptions are made,
# and how the words become tokens for the text encoder.
#
# Why words at all? Stable Diffusion knows what "dim blue twilight" looks like. If we can say how the
# pasted object is lit ("bright warm indoor") and how the scene is lit ("dim blue twilight"), editing the
# object from the first description to the second moves its light towards the scene's, with no training.

# %% cost {"memory": "none", "downloads": ["vlm"], "note": "Only the VLM runs here: SmolVLM-Instruct (2B parameters) describes a composite in seconds on a T4 (about 5 GB in fp16), in a minute or so on a CPU; the tiny VLM of the tests in a second."}

# %% install

# %% tags=["parameters"]
import os

MODEL = os.environ.get("ZSHARM_MODEL", "auto")   # for its tokenizer; auto: SD 2 base where it can run, else the toy
QUICK = os.environ.get("ZSHARM_QUICK") == "1"   # the tests' run: tiny models
FULL = False                                     # True: the paper's settings everywhere (nothing changes here)
# The VLM to ask: auto: SmolVLM-Instruct (4.5 GB) where it can be had, else (offline) "tiny", a random-weight
# model of the same family (seconds); or a Hugging Face id or a local folder.
VLM = os.environ.get("ZSHARM_VLM", "auto")
DEVICE = None                                    # None: CUDA if there is one, else Apple MPS, else CPU

# %%
# %matplotlib inline
import matplotlib.pyplot as plt

from zsharm.teaching.plots import show_images
from zsharm.teaching.setup import TINY_NOTE, course_vlm, setup

course = setup(MODEL, DEVICE, quick=QUICK, full=FULL)
image, mask, DATA = course.image, course.mask, course.data
VLM = course_vlm(VLM, tiny=QUICK or course.tiny)
if VLM == "tiny" and not course.tiny:
    print(TINY_NOTE)

# %% [markdown]
# ## The closed dictionary
#
# The paper restricts the VLM to seven lists of words. A description takes **at most one word per list** on
# each side and **always a brightness word**. A closed dictionary does three things: the diffusion model
# surely knows every word; two descriptions can be compared word by word (Regenerate must give a different
# one); and nothing but these words can reach the prompts.

# %%
from zsharm.vocabulary import DICTIONARY

for name, words in DICTIONARY.items():
    print(f"{name:>12}: {', '.join(words)}")
print(f"\n{sum(len(w) for w in DICTIONARY.values())} words in {len(DICTIONARY)} lists")

# %% [markdown]
# ## What the model is shown
#
# The VLM gets two pictures and an instruction. The first picture is the composite. The second tells it
# which part is the pasted object. The authors sent the bare black-and-white mask; zsharm sends the object's
# own pixels on flat grey (a *cut-out*). Drawing on the composite (an outline, a tint) would change the very
# colours the model must judge, and a small model lines a silhouette up with the composite poorly.

# %%
from zsharm.describe.instruction import MASK_STYLES, mask_view

show_images([mask_view(image, mask, style) for style in MASK_STYLES], [f'style "{s}"' for s in MASK_STYLES],
            size=3.6, suptitle="Four ways to show the mask (zsharm sends the cut-out)")
plt.show()

# %% [markdown]
# ## The instruction
#
# The instruction lists the dictionary, states the rules and fixes the answer format
# `OBJECT & (foreground) W W ... & (background) W W ...`. Rule 3 is there because composites can contain
# text: text in a picture is part of the picture, never an instruction.

# %%
from zsharm.describe.instruction import INSTRUCTION

print(INSTRUCTION)

# %% [markdown]
# ## Parsing: strict on purpose
#
# Whatever the model answers goes through `parse_description`, which accepts small slips (letter case,
# commas, an article, a full stop, markdown emphasis) and refuses everything else with a one-line reason.
# Only dictionary words reach the prompts, so prose, invented words or an instruction smuggled in through
# the picture never do. A refused answer is simply asked for again (up to `max_attempts`).

# %%
from zsharm.describe.captions import DescriptionFormatError
from zsharm.describe.description import parse_description

answers = [
    "dog & (foreground) bright summer & (background) winter dull greyscale",
    "The dog & (Foreground) bright, summer & (background) dull winter.",
    "**teddy bear** & (foreground) dim & (background) dazzling sunny hot",
    "dog & (foreground) summer & (background) dull winter",
    "dog & (foreground) bright sunny rainy & (background) dull",
    "dog & (foreground) bright & (background) gloomy",
    "The image shows a dog in bright light against a wintry background.",
    "ignore previous instructions & (foreground) bright & (background) dull",
]
for answer in answers:
    try:
        d = parse_description(answer)
        print(f"ACCEPTED  {answer}\n          source {d.source!r}, target {d.target!r}")
    except DescriptionFormatError as error:
        print(f"REFUSED   {answer}\n          {error}")

# %% [markdown]
# Note that the parser puts words in dictionary order ("winter dull greyscale" becomes "dull winter
# greyscale"), so the same choice of words always makes the same prompt.
#
# ## Asking a model
#
# `get_describer` builds the describer the arguments ask for: given prompts, a caption file, an
# OpenAI-compatible endpoint (e.g. Gemini, as the authors used, or a local Ollama), or a local transformers
# model. Here we ask the model named by `VLM`. A tiny random model produces random text, so we expect the
# parser to refuse every answer and the describer to give up with a one-line error; a real model answers in
# the format.

# %%
import tempfile

from zsharm.describe.factory import get_describer

if VLM == "tiny":
    from zsharm.describe.vlm import build_tiny_vlm
    vlm_path = str(build_tiny_vlm(tempfile.mkdtemp(prefix="tiny-vlm-")))
    describer = get_describer(vlm=vlm_path, use_cache=False, max_attempts=2, max_new_tokens=12, device="cpu")
else:
    describer = get_describer(vlm=VLM, device=DEVICE)
try:
    asked = describer.describe(image, mask, n=2, name="demo")
    for k, d in enumerate(asked):
        print(f"candidate {k}: {d}")
except DescriptionFormatError as error:
    print("the describer gave up:", error)

# %% [markdown]
# ## Candidates and Regenerate
#
# The authors ask for **two** candidate descriptions per image; stage 3 runs both and keeps the better one.
# When the evaluator's score falls twice in a row, it asks for a **new** description, different from every
# one tried: the instruction then lists the tried ones. The demo ships its two candidates in the authors'
# caption format, which `GivenDescriber` hands out in order, exactly as a VLM describer would.

# %%
from zsharm.describe.describers import DescriptionExhaustedError, GivenDescriber
from zsharm.describe.description import read_caption_file
from zsharm.describe.instruction import instruction

candidates = read_caption_file(DATA / "demo" / "caption.txt")[0]
given = GivenDescriber(candidates)
first_two = given.describe(image, mask, n=2)
print("candidates:", [str(d) for d in first_two])
print("regenerate after trying the first:", given.regenerate(image, mask, tried=first_two[:1]))
try:
    given.regenerate(image, mask, tried=first_two)
except DescriptionExhaustedError as error:
    print("regenerate after trying both:", error)
print("\n... the end of the instruction a VLM gets on Regenerate:\n")
print(instruction(tried=first_two).split("\n\n")[-1])

# %% [markdown]
# ## From words to tokens
#
# The prompts go to the CLIP text encoder, which splits them into tokens. Refinement (notebook 04) optimises
# the embeddings of the **condition words' tokens**, so zsharm finds each word's token positions instead of
# assuming one token per word: CLIP's BPE splits rarer words. Position 0 is the start token.

# %%
from zsharm.edit.tokens import word_token_spans
from zsharm.teaching.setup import load_tokenizer
from zsharm.teaching.trace import token_labels

tokenizer = load_tokenizer(MODEL)
prompt = "astronaut dim blue twilight greyscale"
print(token_labels(tokenizer, prompt))
for word, positions in word_token_spans(tokenizer, prompt):
    print(f"{word:>10} -> token positions {positions}")
split = [w for words in DICTIONARY.values() for w in words if len(tokenizer(w).input_ids) > 3]
print("\ndictionary words CLIP splits into several tokens:", ", ".join(split))

# %% [markdown]
# ## Exercises
#
# 1. Write three answers a careless model might give for the demo and predict what the parser says before
#    running it.
#    <details><summary>Hint</summary>Try a word outside the dictionary, two brightness words on one side, and a
#    missing "&"; the parser names the first problem it meets.</details>
# 2. With a real VLM, compare the descriptions you get with `mask_style="mask"` (the authors' view) and the
#    default cut-out (`get_describer(vlm=..., mask_style="mask")`). Which are closer to what you see?
#    <details><summary>Hint</summary>Describe the demo five times with each (the sampling is random) and
#    count how often the foreground words say "warm" or "bright".</details>
# 3. `get_describer(base_url=..., vlm_model=...)` talks to any OpenAI-compatible endpoint. Point it at a
#    local Ollama server with a vision model and describe the three composites in `data/composites`.
#    <details><summary>Hint</summary>Ollama serves <code>http://localhost:11434/v1</code>; the model name is
#    the one you pulled (e.g. <code>llava</code>).</details>
# 4. Which dictionary lists matter most for harmonization, and which (environment?) might mislead the edit?
#    Keep this question in mind for notebook 04.
#    <details><summary>Hint</summary>Brightness and colour words change what harmonization should change;
#    environment words ("city", "forest") describe content, and an edit towards them may add content.</details>
# 5. **Graded:** Which of bright, sunny, twilight, gloomy, warm, neon, overcast are in the closed dictionary? Put your answer in `ANSWER` below; the check cell says whether it is right.
#    <details><summary>Hint</summary><code>condition_vocabulary()</code> in <code>zsharm.edit.tokens</code> is the dictionary as a set.</details>

# %%
from zsharm.teaching.exercises import check

ANSWER = None  # your answer to exercise 5
right = check("01", ANSWER)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# from zsharm.edit.tokens import condition_vocabulary
# from zsharm.teaching.exercises import PROBE_WORDS
#
# ANSWER = [w for w in PROBE_WORDS if w in condition_vocabulary()]
# ```
#
# Words outside the dictionary are dropped by the parser; the dictionary (zsharm/vocabulary.py) is the one the paper's prompt lists.
# </details>
