"""A pairwise (A/B) preference study kit: the paper's evidence is a user study on real composites.

1. Make the page: `make_study(results, "study/")` writes study/index.html, one self-contained file (images
   inside as base64, no server, no network) that shows, for one composite at a time, two methods' results
   side by side in a seeded random order and asks which looks more natural. Keys: ← or 1 (left),
   → or 2 (right), ↓ or 0 (no preference), Backspace (undo). Votes stay in the browser's local storage
   until the participant downloads them as a CSV (a Blob link; nothing is sent anywhere).
   study/trials.csv records the design (which method was shown on which side).
2. Collect the CSVs, then `analyse(["votes_ann.csv", "votes_bob.csv"])`: each method's preference rate
   (wins / comparisons, a tie counting half) with a Wilson 95% interval, and a Bradley-Terry ranking
   fitted with Hunter's MM algorithm under a small symmetric prior (so unbeaten or never-winning methods
   keep finite strengths).

The intervals treat votes as independent; with few participants and many votes each, widen them (or
bootstrap over participants with `analyse(..., bootstrap=N)`).

    python -m zsharm.commands.userstudy make runs/real/images study/ --composites data/composites/composite
    python -m zsharm.commands.userstudy analyse votes_*.csv
"""

import base64
import csv
import hashlib
import html
import importlib.resources
import io
import itertools
import json
import math
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsharm.errors import ZsharmError
from zsharm.io.files import write_bytes_atomic

CHOICES = ("left", "right", "tie")
VOTE_COLUMNS = ("participant", "trial", "item", "left_method", "right_method", "choice", "winner", "rt_ms", "time")


# ----------------------------------------------------------------------------- the study page

def study_page_template() -> str:
    """The study page (zsharm/assets/userstudy.html): a plain page, no external resource, no server. A str.format
    template: the braces of its CSS and JS are doubled."""
    return importlib.resources.files("zsharm").joinpath("assets/userstudy.html").read_text(encoding="utf-8")


def results_from_folder(images_dir) -> dict:
    """{item: {method: path}} from `images/<method>/<item>.<ext>` (what `zsharm evaluate --save-images` writes),
    keeping the items every method has."""
    root = Path(images_dir)
    if not root.is_dir():
        raise ZsharmError(f"results folder {root} does not exist")
    per_method = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = {f.stem: f for f in sorted(folder.iterdir()) if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")}
        if files:
            per_method[folder.name] = files
    if len(per_method) < 2:
        raise ZsharmError(f"{root}: a study needs results of at least two methods (one folder per method)")
    items = sorted(set.intersection(*(set(f) for f in per_method.values())))
    if not items:
        raise ZsharmError(f"{root}: no image name is shared by every method's folder")
    return {item: {m: files[item] for m, files in per_method.items()} for item in items}


def plan_trials(results: dict, pairs=None, repeats: int = 1, seed: int = 0) -> list:
    """The trials, shuffled: dicts with trial, item, left, right (method names). Every item gets every
    unordered method pair (or `pairs`, a list of (item, method_a, method_b)) `repeats` times; the side of
    each method is drawn at random, so neither side is favoured."""
    rng = np.random.default_rng(seed)
    if pairs is None:
        pairs = [(item, a, b) for item, methods in results.items() for a, b in itertools.combinations(sorted(methods), 2)]
    planned = []
    for item, a, b in list(pairs) * repeats:
        for method in (a, b):
            if method not in results.get(item, {}):
                raise ZsharmError(f"no result of method {method!r} for item {item!r}")
        if a == b:
            raise ZsharmError(f"a trial must compare two different methods, got {a!r} twice for {item!r}")
        left, right = (a, b) if rng.random() < 0.5 else (b, a)
        planned.append({"item": item, "left": left, "right": right})
    if not planned:
        raise ZsharmError("the study has no trials")
    order = rng.permutation(len(planned))
    return [dict(trial=i + 1, **planned[k]) for i, k in enumerate(order)]


def _image_source(image, out_dir: Path, embed: bool, name: str) -> str:
    """A data URI (embed) or a path relative to out_dir for an image path or an HxWx3 uint8 array."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ZsharmError(f"result image {path} does not exist")
        data, mime = path.read_bytes(), mimetypes.guess_type(path.name)[0] or "image/png"
    else:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
        data, mime = buffer.getvalue(), "image/png"
    if embed:
        return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
    suffix = mimetypes.guess_extension(mime) or ".png"
    target = out_dir / "images" / (name + suffix)
    write_bytes_atomic(target, data)
    return target.relative_to(out_dir).as_posix()


def make_study(results: dict, out_dir, composites: dict | None = None, pairs=None, repeats: int = 1, seed: int = 0,
               title: str = "Which picture looks more natural?",
               question: str = "The object was pasted into the photo. In which version does it fit the scene better?",
               allow_tie: bool = True, embed: bool = True) -> Path:
    """Write a self-contained A/B study page to `out_dir/index.html` (and the design to trials.csv).

    results: {item: {method: image path or HxWx3 uint8 array}}, e.g. `results_from_folder(...)`.
    composites: optional {item: composite image}, shown small above each pair as the reference.
    pairs: optional [(item, method_a, method_b)]; default every method pair for every item.
    embed: images inside the page as base64 (one file to send); False writes them to out_dir/images/.
    Returns the page's path.
    """
    out_dir = Path(out_dir)
    trials = plan_trials(results, pairs=pairs, repeats=repeats, seed=seed)
    images, keys = [], {}  # every image once; trials refer to it by index

    def image_id(kind, item, method=None):
        key = (kind, item, method)
        if key not in keys:
            image = composites[item] if kind == "composite" else results[item][method]
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{kind}_{item}_{method or ''}")
            keys[key] = len(images)
            images.append(_image_source(image, out_dir, embed, f"{len(images):04d}_{safe}"))
        return keys[key]

    page_trials = []
    for t in trials:
        entry = dict(t, left_image=image_id("result", t["item"], t["left"]),
                     right_image=image_id("result", t["item"], t["right"]))
        if composites and t["item"] in composites:
            entry["composite_image"] = image_id("composite", t["item"])
        page_trials.append(entry)
    # the key of the browser's saved answers: the same design resumes, another starts afresh
    design = json.dumps([(t["item"], t["left"], t["right"]) for t in trials]).encode("utf-8")
    study_id = "zsharm-study-" + hashlib.sha1(design).hexdigest()[:12]
    page = study_page_template().format(
        title=html.escape(title), question=html.escape(question), study_id=json.dumps(study_id),
        allow_tie="true" if allow_tie else "false", tie_display="inline-block" if allow_tie else "none",
        trials=json.dumps(page_trials).replace("</", "<\\/"), images=json.dumps(images).replace("</", "<\\/"),
        columns=json.dumps(list(VOTE_COLUMNS)))
    path = out_dir / "index.html"
    write_bytes_atomic(path, page.encode("utf-8"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "item", "left_method", "right_method"])
    for t in trials:
        writer.writerow([t["trial"], t["item"], t["left"], t["right"]])
    write_bytes_atomic(out_dir / "trials.csv", buffer.getvalue().encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- analysis

@dataclass
class MethodResult:
    method: str
    wins: float               # a tie counts half
    comparisons: int
    rate: float               # wins / comparisons
    ci_low: float             # Wilson interval of the rate
    ci_high: float
    strength: float           # Bradley-Terry strength, strengths sum to 1
    strength_low: float | None = None    # bootstrap interval over participants, when asked for
    strength_high: float | None = None
    rank: int = 0


@dataclass
class StudyReport:
    methods: list                                  # MethodResult, best first (by Bradley-Terry strength)
    wins: dict = field(default_factory=dict)       # wins[a][b]: a preferred to b (ties half)
    votes: int = 0
    ties: int = 0
    participants: int = 0
    confidence: float = 0.95

    def ranking(self) -> list:
        return [m.method for m in self.methods]

    def probability(self, a: str, b: str) -> float:
        """Bradley-Terry probability that `a` is preferred to `b`."""
        s = {m.method: m.strength for m in self.methods}
        return s[a] / (s[a] + s[b])

    def to_markdown(self) -> str:
        pct = round(self.confidence * 100)
        lines = [f"{self.votes} votes ({self.ties} ties) from {self.participants} participant(s)", "",
                 f"| rank | method | preferred | rate | {pct}% interval | Bradley-Terry strength |",
                 "|---:|---|---:|---:|---|---:|"]
        for m in self.methods:
            strength = f"{m.strength:.3f}"
            if m.strength_low is not None:
                strength += f" ({m.strength_low:.3f}–{m.strength_high:.3f})"
            lines.append(f"| {m.rank} | {m.method} | {m.wins:g}/{m.comparisons} | {m.rate:.1%} | "
                         f"{m.ci_low:.1%}–{m.ci_high:.1%} | {strength} |")
        return "\n".join(lines) + "\n"

    __str__ = to_markdown

    def plot(self, ax=None):
        """Preference rates with their intervals, best method on top."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(self.methods)))
        methods = self.methods[::-1]
        y = np.arange(len(methods))
        rates = np.array([m.rate for m in methods])
        err = np.array([[m.rate - m.ci_low for m in methods], [m.ci_high - m.rate for m in methods]])
        ax.barh(y, rates, xerr=err, color="#4a90d9", capsize=4)
        ax.axvline(0.5, color="grey", lw=1, ls="--")
        ax.set_yticks(y, [m.method for m in methods])
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"preference rate ({round(self.confidence * 100)}% Wilson interval)")
        return ax


def wilson_interval(successes: float, n: int, confidence: float = 0.95):
    """Wilson score interval of a binomial proportion (successes may be fractional: ties count half)."""
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bradley_terry(wins, prior: float = 1.0, iterations: int = 10000, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry strengths (summing to 1) from a KxK matrix wins[i, j] (i preferred to j; ties entered
    as half a win each way), by Hunter's (2004) MM algorithm. `prior` adds that many virtual comparisons
    to every pair, split evenly, which keeps every strength finite and positive (a method that never
    wins, or never loses) and links methods the design never compared directly."""
    w = np.asarray(wins, dtype=np.float64).copy()
    k = w.shape[0]
    if w.shape != (k, k) or k < 2:
        raise ZsharmError(f"Bradley-Terry needs a square matrix of at least two methods, got {w.shape}")
    off = ~np.eye(k, dtype=bool)
    w[off] += prior / 2.0
    np.fill_diagonal(w, 0.0)
    games = w + w.T
    total_wins = w.sum(axis=1)
    if (total_wins <= 0).any():
        raise ZsharmError("a method has no comparisons and no prior: its strength is undefined")
    p = np.full(k, 1.0 / k)
    for _ in range(iterations):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = total_wins / denom
        new /= new.sum()
        if np.abs(new - p).max() < tol:
            p = new
            break
        p = new
    return p


def read_votes(votes) -> list:
    """Votes as a list of dicts from: a CSV path, a list of paths, a list of dicts, or a pandas DataFrame."""
    if hasattr(votes, "to_dict"):  # a pandas DataFrame
        return [dict(r) for r in votes.to_dict("records")]
    if isinstance(votes, (str, Path)):
        votes = [votes]
    rows = []
    for item in votes:
        if isinstance(item, dict):
            rows.append(item)
            continue
        path = Path(item)
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows += list(csv.DictReader(f))
        except OSError as error:
            raise ZsharmError(f"cannot read votes {path}: {error.strerror or error}") from None
    return rows


def _outcome(row, number):
    """(method_a, method_b, score of a: 1, 0 or 0.5) from one vote."""
    try:
        a, b = str(row["left_method"]).strip(), str(row["right_method"]).strip()
    except KeyError as missing:
        raise ZsharmError(f"vote {number} has no {missing.args[0]} column") from None
    if not a or not b or a == b:
        raise ZsharmError(f"vote {number} compares {a!r} with {b!r}")
    choice = str(row.get("choice") or "").strip().lower()
    winner = str(row.get("winner") or "").strip()
    if choice not in CHOICES:  # fall back to the winner column
        if winner == a:
            choice = "left"
        elif winner == b:
            choice = "right"
        elif winner.lower() == "tie":
            choice = "tie"
        else:
            raise ZsharmError(f"vote {number}: choice {row.get('choice')!r} / winner {winner!r} is not "
                              f"left, right, tie or one of {a!r}, {b!r}")
    return a, b, {"left": 1.0, "right": 0.0, "tie": 0.5}[choice]


def analyse(votes, prior: float = 1.0, confidence: float = 0.95, bootstrap: int = 0, seed: int = 0) -> StudyReport:
    """Preference rates with Wilson intervals and a Bradley-Terry ranking from A/B votes.

    votes: CSV path(s), dicts or a DataFrame with columns left_method, right_method and choice
    (left/right/tie) or winner (a method name or "tie"), as the study page writes them.
    bootstrap: if > 0, that many resamples of participants give intervals for the strengths.
    """
    rows = read_votes(votes)
    if not rows:
        raise ZsharmError("there are no votes to analyse")
    outcomes = [_outcome(row, i) for i, row in enumerate(rows, 1)]
    methods = sorted({m for a, b, _ in outcomes for m in (a, b)})
    index = {m: i for i, m in enumerate(methods)}

    def matrix(selected):
        w = np.zeros((len(methods), len(methods)))
        for a, b, score in selected:
            w[index[a], index[b]] += score
            w[index[b], index[a]] += 1.0 - score
        return w

    w = matrix(outcomes)
    strengths = bradley_terry(w, prior=prior)
    comparisons = np.zeros(len(methods), dtype=int)
    for a, b, _ in outcomes:
        comparisons[index[a]] += 1
        comparisons[index[b]] += 1
    bounds = [(None, None)] * len(methods)
    participants = [str(r.get("participant", "")) for r in rows]
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        people = sorted(set(participants))
        by_person = {p: [o for o, q in zip(outcomes, participants) if q == p] for p in people}
        samples = []
        for _ in range(bootstrap):
            drawn = [by_person[people[k]] for k in rng.integers(len(people), size=len(people))]
            samples.append(bradley_terry(matrix([o for group in drawn for o in group]), prior=prior))
        lo, hi = np.quantile(np.array(samples), [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
        bounds = list(zip(lo.tolist(), hi.tolist()))
    results = []
    for m, i in index.items():
        won = float(w[i].sum())
        low, high = wilson_interval(won, int(comparisons[i]), confidence)
        results.append(MethodResult(m, won, int(comparisons[i]), won / comparisons[i], low, high,
                                    float(strengths[i]), bounds[i][0], bounds[i][1]))
    results.sort(key=lambda r: -r.strength)
    for rank, r in enumerate(results, 1):
        r.rank = rank
    table = {a: {b: float(w[index[a], index[b]]) for b in methods if b != a} for a in methods}
    ties = sum(1 for _, _, s in outcomes if s == 0.5)
    return StudyReport(results, table, len(outcomes), ties, len(set(participants)), confidence)

