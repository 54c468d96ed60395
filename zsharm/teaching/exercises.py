"""Graded exercises: each notebook ends with one whose answer a check cell marks right or wrong.

    from zsharm.teaching.exercises import check
    check("02", ANSWER)        # prints whether the answer is right, and why not; returns True or False

Every expected answer is computed here from the library (the configuration, the vocabulary, the loop's own
rule), never typed in, so a check stays right when the library changes and holds for whatever model a
notebook loaded. An answer left at `None` is "not answered yet", not wrong: a notebook run end to end
(papermill, the tests) passes through its check cells without stopping.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from zsharm.errors import ZsharmError


@dataclass
class Exercise:
    question: str
    grade: Callable          # answer -> (right: bool, why: str)


def _integer(answer, expected, unit=""):
    try:
        value = int(answer)
    except (TypeError, ValueError):
        return False, f"give a whole number{unit}, not {answer!r}"
    if value != answer:
        return False, f"give a whole number{unit}, not {answer!r}"
    if value == expected:
        return True, f"{expected:,}{unit}"
    return False, f"{value:,}{unit} is {'too many' if value > expected else 'too few'}"


def _words(answer):
    if isinstance(answer, str):
        answer = answer.split()
    try:
        return {str(w).strip().lower() for w in answer}
    except TypeError:
        return None


def _same_words(answer, expected: set, what: str):
    got = _words(answer)
    if got is None:
        return False, f"give the {what} as a list of words, not {answer!r}"
    if got == expected:
        return True, f"{what}: {', '.join(sorted(expected))}"
    missing, extra = sorted(expected - got), sorted(got - expected)
    return False, "; ".join(part for part in (f"missing {len(missing)} word(s)" if missing else "",
                                             f"{', '.join(extra)} should not be there" if extra else "") if part)


# ----------------------------------------------------------------------------- the exercises, per notebook

def _changed_words(answer, source="astronaut bright warm indoor", target="astronaut dim blue twilight"):
    from zsharm.edit.tokens import condition_vocabulary, split_object
    n_object = split_object(source, target, condition_vocabulary())
    expected = set(target.split()[n_object:]) - set(source.split()[n_object:])
    return _same_words(answer, expected, "the target's new condition words")


PROBE_WORDS = ("bright", "sunny", "twilight", "gloomy", "warm", "neon", "overcast")


def _dictionary_words(answer):
    from zsharm.edit.tokens import condition_vocabulary
    return _same_words(answer, set(PROBE_WORDS) & condition_vocabulary(), "the dictionary's words among them")


def _inner_steps(schedule: str, steps: int = 50):
    from zsharm.config import HarmonizeConfig
    config = getattr(HarmonizeConfig, schedule)(steps=steps)
    # no early stop counted: the most inner steps the schedule allows
    return sum(config.nulltext_inner_steps(i) for i in range(steps - 1))


def _paper_inner_steps(answer):
    return _integer(answer, _inner_steps("paper"), " inner steps")


def _fast_inner_steps(answer):
    return _integer(answer, _inner_steps("fast"), " inner steps")


def _map_bytes(answer, size: int = 512, divisor: int = 8, tokens: int = 77):
    return _integer(answer, (size // divisor) ** 2 * tokens * 4, " bytes")


def _foreground_term(answer):
    """The student's function (M, A) -> the L_Emb term || M - A / max A ||^2 (mean), on random maps."""
    import torch.nn.functional as F
    if not callable(answer):
        return False, "give a function (M, A) -> the term, e.g. def term(M, A): ..."
    g = torch.Generator().manual_seed(0)
    for trial in range(4):
        shape = (4 + 4 * trial, 4 + 2 * trial)
        mask = (torch.rand(shape, generator=g) > 0.6).float()
        heat = torch.rand(shape, generator=g) * (0.01 + trial)
        expected = F.mse_loss(mask, heat / heat.max()).item()
        try:
            got = float(answer(mask.clone(), heat.clone()))
        except Exception as exc:  # the student's code: say what went wrong, don't stop the notebook
            return False, f"your function raised {type(exc).__name__}: {exc}"
        if not np.isclose(got, expected, rtol=1e-5, atol=1e-7):
            return False, f"on a {shape[0]}x{shape[1]} map it gives {got:.6f}, the loss is {expected:.6f}"
    return True, "your term equals the library's on random maps"


def _pidinet_gradient(answer):
    from zsharm.config import HarmonizeConfig
    # the paper runs PiDiNet under no_grad: gamma scales a term that adds to the loss but not to its gradient
    expected = bool(HarmonizeConfig.paper().pidinet_grad)
    if not isinstance(answer, bool):
        return False, f"answer True or False, not {answer!r}"
    if answer == expected:
        return True, "with pidinet_grad False the PiDiNet term is a constant to autograd"
    return False, "look at pidinet_grad in HarmonizeConfig.paper() and what torch.no_grad does to a term"


def _replacement_steps(answer, cross: float = 0.8, self_: float = 0.4, steps: int = 50):
    from zsharm.config import HarmonizeConfig
    from zsharm.edit.prompt_to_prompt import replacement_steps
    expected = replacement_steps(HarmonizeConfig.paper(steps=steps, cross_replace_steps=cross,
                                                        self_replace_steps=self_))
    try:
        got = tuple(int(v) for v in answer)
    except (TypeError, ValueError):
        return False, f"give two whole numbers (cross steps, self steps), not {answer!r}"
    if got == expected:
        return True, f"cross maps for {expected[0]} steps, self maps for {expected[1]}"
    names = ("cross", "self")
    wrong = [f"{names[k]}: {got[k]} is not it" for k in range(2) if k < len(got) and got[k] != expected[k]]
    return False, "; ".join(wrong) or "give exactly two numbers"


def _regenerate_at_two(answer):
    from zsharm.teaching.widgets import decision_trace
    try:
        scores = [float(s) for s in answer]
    except (TypeError, ValueError):
        return False, f"give a list of scores between 0 and 1, not {answer!r}"
    if any(not 0 <= s <= 1 for s in scores):
        return False, "scores are probabilities, between 0 and 1"
    result = decision_trace(scores, iterations=10)
    decisions = {r.iteration: r.decision for r in result.history if r.decision != "drop"}
    if decisions.get(2) == "regenerate":
        return True, "the loop regenerates after iteration 2, the earliest it can"
    return False, (f"after iteration 2 the loop decided {decisions.get(2, 'nothing: it had stopped')!r}; "
                   f"the run's scores must fall twice in a row")


def _loop_iterations(answer, budget: int = 3, candidates: int = 2):
    from zsharm.teaching.widgets import decision_trace
    rising = list(np.linspace(0.1, 0.9, budget + candidates + 5))
    expected = len(decision_trace(rising, iterations=budget, candidates=candidates).history)
    return _integer(answer, expected, " runs of stage 2")


def _fmse(answer, mse: float = 4.0, size: int = 100, side: int = 20):
    """fMSE of an image whose only errors are in a side x side foreground of a size x size image."""
    from zsharm.quality.metrics import measure
    real = np.zeros((size, size, 3), np.uint8)
    out = real.copy()
    mask = np.zeros((size, size), bool)
    mask[:side, :side] = True
    # errors of equal size inside the mask give the whole image's MSE asked for
    out[mask] = round(float(np.sqrt(mse * size * size / (side * side))))
    measured = measure(out, real, mask)
    assert np.isclose(measured["mse"], mse), "the question's numbers must make whole-number pixel errors"
    expected = measured["fmse"]
    try:
        got = float(answer)
    except (TypeError, ValueError):
        return False, f"give a number, not {answer!r}"
    if np.isclose(got, expected, rtol=1e-3):
        return True, f"fMSE = MSE x HW / |M| = {expected:g}"
    return False, f"{got:g} is not it: MSE averages over all {size * size} pixels, fMSE over the foreground's"


EXERCISES = {
    "00": Exercise("Which condition words does the demo's target description bring that its source lacks?",
                   _changed_words),
    "01": Exercise(f"Which of {', '.join(PROBE_WORDS)} are in the closed dictionary?", _dictionary_words),
    "02": Exercise("How many null-text inner steps (AdamW steps) does the paper schedule take at 50 steps, "
                   "with no early stop?", _paper_inner_steps),
    "03": Exercise("How many bytes does one head-averaged image/8 cross-attention map of one layer at one step "
                   "take at 512 px in float32?", _map_bytes),
    "04": Exercise("Write the foreground term of L_Emb as a function term(M, A) of the mask and the summed map.",
                   _foreground_term),
    "05": Exercise("Under the paper schedule, does gamma (the PiDiNet weight) change the gradient of the "
                   "null-text loss? True or False.", _pidinet_gradient),
    "06": Exercise("With cross_replace_steps=0.8, self_replace_steps=0.4 and 50 steps, for how many steps are "
                   "the cross- and the self-attention maps replaced? (cross, self)", _replacement_steps),
    "07": Exercise("Give scores (iteration 0's two candidates first) for which the loop Regenerates after "
                   "iteration 2.", _regenerate_at_two),
    "08": Exercise("With two candidate descriptions and a budget of 3, how many times at most does the loop run "
                   "stage 2?", _loop_iterations),
    "09": Exercise("A 100x100 result differs from its ground truth only inside a 20x20 foreground, and its MSE is "
                   "4. What is its fMSE?", _fmse),
    "10": Exercise("How many null-text inner steps does the fast schedule take at 50 steps at most?",
                   _fast_inner_steps),
}


def grade(notebook: str, answer) -> tuple:
    """(right, why) for `answer` to notebook `notebook`'s graded exercise; (False, ...) when unanswered."""
    if notebook not in EXERCISES:
        raise ZsharmError(f"no graded exercise {notebook!r}; there are {', '.join(EXERCISES)}")
    if answer is None:
        return False, "not answered yet: set ANSWER in the cell above and run both cells again"
    return EXERCISES[notebook].grade(answer)


def check(notebook: str, answer) -> bool:
    """Print whether `answer` is right (and why not), return True or False. Never raises for a wrong answer."""
    right, why = grade(notebook, answer)
    print(("Right: " if right else "Not right yet: " if answer is not None else "") + why)
    return right
