"""zsharm.teaching.exercises: every graded exercise accepts its right answer and refuses wrong ones.

The right answers below are worked out by hand from the method (docs/method.md), not read from the module, so
a check whose expected answer drifts from the method fails here.
"""

import pytest
import torch

from zsharm.errors import ZsharmError
from zsharm.teaching.exercises import EXERCISES, check, grade


def _l_emb_term(M, A):
    return ((M - A / A.max()) ** 2).mean()


RIGHT = {
    "00": ["dim", "blue", "twilight"],
    "01": ["bright", "sunny", "twilight", "warm", "neon"],   # the probe words zsharm/vocabulary.py lists
    "02": 10 * 1 + 10 * 2 + 10 * 3 + 10 * 4 + 9 * 5,    # floor(i/10) + 1, capped at 5, i = 0 .. 48
    "03": 64 * 64 * 77 * 4,
    "04": _l_emb_term,
    "05": False,
    "06": (int(0.8 * 51), int(50 * 0.4)),
    "07": [0.3, 0.8, 0.6, 0.4],             # d1 kept at 0.8, then 0.6 and 0.4: two falls by iteration 2
    "08": 4,                                 # iteration 0 runs both candidates, then iterations 1 and 2
    "09": 4 * 100 * 100 / (20 * 20),
    "10": 49,
}

WRONG = {
    "00": [["bright", "warm", "indoor"], ["dim", "blue"], "dim blue twilight astronaut"],
    "01": [["bright", "sunny", "twilight", "warm"], ["bright", "sunny", "twilight", "warm", "neon", "gloomy"]],
    "02": [49, 146, "many"],
    "03": [64 * 64 * 77, 16 * 16 * 77 * 4, 64 * 64 * 77 * 4 * 8],
    "04": [lambda M, A: ((M - (A - A.min()) / (A.max() - A.min())) ** 2).mean(),   # the min-max stretch
           lambda M, A: ((M - A / A.max()) ** 2).sum(),
           lambda M, A: ((M - A) ** 2).mean(), "not a function", lambda M: 0.0],
    "05": [True, "no"],
    "06": [(40, 21), (41, 20), (40,), "forty"],
    "07": [[0.3, 0.5, 0.6, 0.7, 0.8], [0.3, 0.5, 0.6, 0.55, 0.55], [0.3, 0.5, 2.0, 0.1, 0.0], "scores"],
    "08": [3, 5, 4.5],
    "09": [4, 4 * 400 / 10000, 10],
    "10": [145, 50],
}


def test_every_notebook_has_a_graded_exercise():
    assert sorted(EXERCISES) == [f"{i:02d}" for i in range(11)]


@pytest.mark.parametrize("notebook", sorted(RIGHT))
def test_the_right_answer_is_accepted(notebook, capsys):
    assert check(notebook, RIGHT[notebook]) is True
    assert capsys.readouterr().out.startswith("Right: ")


@pytest.mark.parametrize("notebook", sorted(WRONG))
def test_a_wrong_answer_is_refused_and_told_so(notebook, capsys):
    for answer in WRONG[notebook]:
        assert check(notebook, answer) is False, answer
        out = capsys.readouterr().out
        assert out.startswith("Not right yet: ") and len(out.strip().split("\n")) == 1, out


def test_an_unanswered_exercise_is_neither_right_nor_an_error(capsys):
    assert check("03", None) is False
    assert "not answered yet" in capsys.readouterr().out


def test_an_unknown_exercise_is_a_one_line_error():
    with pytest.raises(ZsharmError, match="no graded exercise '11'"):
        grade("11", 3)


def test_the_l_emb_term_check_uses_the_mean_over_the_map():
    # a function that is right on one map but not on others (hard-coded) is refused
    value = float(_l_emb_term(torch.ones(4, 4), torch.ones(4, 4)))
    assert grade("04", lambda M, A: value)[0] is False
