"""Stage 3, the decision rule: after each iteration, Continue, Regenerate the description, or Conclude."""

from typing import Sequence

CONTINUE, REGENERATE, CONCLUDE = "continue", "regenerate", "conclude"


def decide(scores: Sequence[float], regenerated: bool) -> str:
    """What to do after an iteration, from the scores of the current run.

    `scores` holds the current run's scores in order: for the first run the kept iteration-0 score then one
    score per iteration; after a Regenerate, only the scores of iterations run with the new description.
    If the score fell twice in a row (s[-1] < s[-2] < s[-3]) the answer is "regenerate" the first time
    (`regenerated` False) and "conclude" afterwards; otherwise "continue".

    Compared with the authors' main.py (`run_harmonization`):
    - Same test, same once-only Regenerate. They keep one score list per candidate and append 0 to every
      candidate not used in an iteration; scores are probabilities (>= 0), so those zeros can never be part
      of a strict fall, and a fresh run needs three scores of its own before it can end, as here.
    - Both go back to the image from two iterations earlier (the one scored s[-3]) on Regenerate, and both
      return the best-scoring image over all iterations (iteration-0 candidates included). Equal best scores:
      theirs goes to the lowest-numbered candidate's earliest iteration, zsharm's to the earliest iteration.
    - They go on from the re-opened JPEG after iteration 0 and on Regenerate; `run_loop(reload=...)` does
      so under the `paper` schedule.
    - Their offline fallback picks the new description at random among the other candidates; `run_loop`
      takes the best-scoring other candidate, or asks `regenerate` (stage 1) for a new one as the paper does.
    """
    s = list(scores)
    if len(s) >= 3 and s[-1] < s[-2] < s[-3]:
        return CONCLUDE if regenerated else REGENERATE
    return CONTINUE

