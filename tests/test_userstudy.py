import base64
import csv
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from zsharm.errors import ZsharmError
from zsharm.quality.userstudy import analyse, bradley_terry, make_study, plan_trials, results_from_folder, wilson_interval

TRUE = {"zsharm": 4.0, "poisson": 2.0, "reinhard": 1.0, "copy-paste": 0.5}  # Bradley-Terry strengths


def simulate(strengths, participants=20, items=8, seed=0, tie_rate=0.0):
    """Votes of `participants` people, each seeing every method pair for every item once, choosing by
    Bradley-Terry probabilities; a fraction `tie_rate` of votes are ties."""
    rng = np.random.default_rng(seed)
    rows = []
    for person in range(participants):
        for item in range(items):
            for a, b in combinations(sorted(strengths), 2):
                left, right = (a, b) if rng.random() < 0.5 else (b, a)
                if rng.random() < tie_rate:
                    choice = "tie"
                else:
                    p_left = strengths[left] / (strengths[left] + strengths[right])
                    choice = "left" if rng.random() < p_left else "right"
                winner = {"left": left, "right": right, "tie": "tie"}[choice]
                rows.append(dict(participant=f"p{person}", item=f"i{item}", left_method=left,
                                 right_method=right, choice=choice, winner=winner))
    return rows


def expected_rate(strengths, method):
    """The preference rate a method should show when it meets every other method equally often."""
    others = [m for m in strengths if m != method]
    return np.mean([strengths[method] / (strengths[method] + strengths[o]) for o in others])


# ----------------------------------------------------------------------------- analysis

def test_wilson_interval_by_hand():
    # 8 of 10 at 95%: the textbook Wilson interval (no continuity correction) is 0.4902 - 0.9433
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    # none of 10: the upper bound is z^2 / (n + z^2) = 0.2775
    assert wilson_interval(0, 10) == pytest.approx((0.0, 1.959964**2 / (10 + 1.959964**2)), abs=1e-6)


def test_bradley_terry_by_hand():
    # two methods, a beat b 30 times of 40: the maximum-likelihood strengths are 30:10
    p = bradley_terry([[0, 30], [10, 0]], prior=0.0)
    assert p == pytest.approx([0.75, 0.25], abs=1e-8)
    # three methods with every pair in the same 2:1 ratio chain fit exactly: strengths 4:2:1
    w = np.array([[0, 20, 40], [10, 0, 20], [10, 10, 0]], float)
    w[2, 0], w[0, 2] = 8.0, 32.0   # 4:1 for the (0, 2) pair
    assert bradley_terry(w, prior=0.0) == pytest.approx(np.array([4, 2, 1]) / 7, abs=1e-6)


def test_prior_keeps_unbeaten_and_winless_methods_finite():
    w = [[0, 12, 9], [0, 0, 7], [0, 0, 0]]   # method 0 never lost, method 2 never won
    p = bradley_terry(w, prior=1.0)
    assert np.all(p > 0) and np.all(np.isfinite(p)) and p[0] > p[1] > p[2]
    with pytest.raises(ZsharmError):
        bradley_terry(w, prior=0.0)


def test_simulated_votes_recover_the_true_ranking_and_rates():
    votes = simulate(TRUE, participants=60, items=8, seed=1)
    # 99% intervals: all four must hold their truth in this one draw; the 95% calibration is tested below
    report = analyse(votes, confidence=0.99)
    assert report.ranking() == ["zsharm", "poisson", "reinhard", "copy-paste"]
    assert report.votes == len(votes) and report.participants == 60
    strengths = np.array([TRUE[m.method] for m in report.methods])
    estimated = np.array([m.strength for m in report.methods])
    # 480 comparisons per pair leave the weakest method's strength about 10% uncertain
    assert estimated == pytest.approx(strengths / strengths.sum(), rel=0.25)
    for m in report.methods:
        assert m.ci_low < expected_rate(TRUE, m.method) < m.ci_high
        assert m.comparisons == 3 * 8 * 60
    assert report.probability("zsharm", "copy-paste") == pytest.approx(4 / 4.5, abs=0.04)


def test_wilson_intervals_cover_at_their_nominal_rate():
    """Over 300 small simulated studies, each method's 95% interval holds its true rate about 95% of the time."""
    covered = total = 0
    for seed in range(300):
        report = analyse(simulate(TRUE, participants=3, items=2, seed=100 + seed), prior=1.0)
        for m in report.methods:
            covered += m.ci_low <= expected_rate(TRUE, m.method) <= m.ci_high
            total += 1
    assert 0.90 <= covered / total <= 0.99


def test_ties_count_half_and_winner_column_alone_suffices(tmp_path):
    votes = simulate(TRUE, participants=4, items=3, seed=2, tie_rate=0.3)
    report = analyse(votes)
    ties = sum(v["choice"] == "tie" for v in votes)
    assert report.ties == ties
    assert sum(m.wins for m in report.methods) == pytest.approx(len(votes))  # each vote gives one win in total
    path = tmp_path / "votes.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["participant", "left_method", "right_method", "winner"])
        writer.writeheader()
        writer.writerows({k: v[k] for k in writer.fieldnames} for v in votes)
    again = analyse(path)
    assert again.ranking() == report.ranking()
    assert [m.wins for m in again.methods] == [m.wins for m in report.methods]


def test_bootstrap_intervals_contain_the_estimates():
    report = analyse(simulate(TRUE, participants=10, items=4, seed=3), bootstrap=60, seed=0)
    for m in report.methods:
        assert m.strength_low <= m.strength <= m.strength_high
    assert "Bradley-Terry" in report.to_markdown()


@pytest.mark.parametrize("row, message", [
    (dict(left_method="a", right_method="a", choice="left"), "compares"),
    (dict(left_method="a", right_method="b", choice="maybe"), "is not left, right, tie"),
    (dict(right_method="b", choice="left"), "no left_method column"),
])
def test_bad_votes_are_one_line_errors(row, message):
    with pytest.raises(ZsharmError, match=message):
        analyse([row])


# ----------------------------------------------------------------------------- the page

class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts, self.ids, self.links, self._script = {}, set(), [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == "script":
            self._script = attrs.get("id", "main")
            self.scripts[self._script] = ""

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script:
            self.scripts[self._script] += data


def _results(tmp_path, methods=("copy-paste", "reinhard", "zsharm"), items=("001", "002")):
    for k, method in enumerate(methods):
        for i, item in enumerate(items):
            path = tmp_path / "images" / method / f"{item}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 12), (40 * k, 60 * i, 100)).save(path)
    return results_from_folder(tmp_path / "images")


def _parse(path):
    page = _Page()
    page.feed(path.read_text())
    return page


def test_study_page_is_self_contained_and_randomised(tmp_path):
    results = _results(tmp_path)
    path = make_study(results, tmp_path / "study", seed=3, composites={"001": np.zeros((12, 16, 3), np.uint8)})
    page = _parse(path)
    assert {"left", "right", "choose-tie", "download", "participant"} <= page.ids
    trials = json.loads(page.scripts["trials"])
    images = json.loads(page.scripts["images"])
    assert len(trials) == 2 * 3  # two items x three method pairs
    assert {(t["item"], frozenset((t["left"], t["right"]))) for t in trials} == {
        (item, frozenset(pair)) for item in ("001", "002") for pair in combinations(["copy-paste", "reinhard", "zsharm"], 2)}
    assert all("composite_image" in t for t in trials if t["item"] == "001")
    for uri in images:  # every picture travels inside the page
        assert uri.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).verify()
    assert len(images) == 2 * 3 + 1  # each image once, however many trials show it
    assert not any(link.startswith(("http:", "https:", "//")) for link in page.links)
    script = page.scripts["main"]
    assert "new Blob" in script and "keydown" in script and "localStorage" in script
    design = list(csv.DictReader(open(tmp_path / "study" / "trials.csv")))
    assert [(d["item"], d["left_method"], d["right_method"]) for d in design] == [
        (t["item"], t["left"], t["right"]) for t in trials]
    # the seed fixes the page; another seed changes the order
    again = make_study(results, tmp_path / "again", seed=3, composites={"001": np.zeros((12, 16, 3), np.uint8)})
    assert again.read_bytes() == path.read_bytes()
    assert plan_trials(results, seed=4) != plan_trials(results, seed=3)
    # or with the images beside the page, referred to by relative paths
    linked = make_study(results, tmp_path / "linked", seed=3, embed=False)
    for src in json.loads(_parse(linked).scripts["images"]):
        assert not src.startswith(("data:", "/")) and (tmp_path / "linked" / src).is_file()


def test_sides_are_balanced():
    results = {f"i{k}": {m: "unused.png" for m in ("a", "b")} for k in range(400)}
    trials = plan_trials(results, seed=0)
    left_a = sum(t["left"] == "a" for t in trials)
    assert 160 < left_a < 240  # 400 fair coin flips


def test_study_errors(tmp_path):
    with pytest.raises(ZsharmError, match="at least two methods"):
        (tmp_path / "only" / "m").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "only" / "m" / "x.png")
        results_from_folder(tmp_path / "only")
    with pytest.raises(ZsharmError, match="no result of method"):
        plan_trials({"x": {"a": "p.png"}}, pairs=[("x", "a", "b")])


_HARNESS = r"""
// A minimal stand-in for the browser: elements by id, local storage, Blob links, key events.
const fs = require("fs");
const page = fs.readFileSync(process.argv[2], "utf8");
const grab = id => page.split('<script id="' + id + '" type="application/json">')[1].split("</script>")[0];
const main = page.split("<script>")[1].split("</script>")[0];
const classes = {start: new Set(), study: new Set(["hidden"]), done: new Set(["hidden"])};
const elements = {};
function element(id) {
  if (!elements[id]) {
    const set = classes[id] || new Set();
    elements[id] = {id, value: "", src: "", href: "", download: "", textContent: "", style: {}, onclick: null,
      classList: {toggle: (c, on) => on ? set.add(c) : set.delete(c), contains: c => set.has(c)},
      appendChild() {}};
  }
  return elements[id];
}
element("trials").textContent = grab("trials");
element("images").textContent = grab("images");
const listeners = [];
const blobs = {};
global.document = {getElementById: element, createElement: () => ({}), addEventListener: (t, f) => listeners.push(f)};
const store = {};
global.localStorage = {getItem: k => store[k] || null, setItem: (k, v) => { store[k] = v; }};
global.performance = {now: () => 1000};
global.Blob = class { constructor(parts) { this.text = parts.join(""); } };
global.URL = {createObjectURL: b => { const u = "blob:" + Object.keys(blobs).length; blobs[u] = b.text; return u; }};
global.confirm = () => true;
eval(main);
const key = k => listeners.forEach(f => f({key: k, preventDefault() {}}));
element("participant").value = "ann";
element("begin").onclick();
const keys = JSON.parse(process.argv[3]);
for (const k of keys) key(k);
process.stdout.write(JSON.stringify({done: !classes.done.has("hidden"), download: element("download").download,
  csv: blobs[element("download").href] || null}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_page_script_records_choices_and_offers_them_as_csv(tmp_path):
    """Drive the page's own JavaScript (in node, with a stand-in DOM): keys choose, Backspace undoes,
    and the finished study offers a CSV that `analyse` reads."""
    results = _results(tmp_path)
    path = make_study(results, tmp_path / "study", seed=5)
    trials = json.loads(_parse(path).scripts["trials"])
    harness = tmp_path / "harness.js"
    harness.write_text(_HARNESS)
    # six trials: left, right, tie, then a mistaken left undone, then right, left, 1
    keys = ["ArrowLeft", "ArrowRight", "0", "ArrowLeft", "Backspace", "2", "1", "1"]
    out = subprocess.run(["node", str(harness), str(path), json.dumps(keys)], capture_output=True, text=True,
                         timeout=60, check=True)
    state = json.loads(out.stdout)
    assert state["done"] and state["download"] == "votes_ann.csv"
    rows = list(csv.DictReader(io.StringIO(state["csv"])))
    assert [r["choice"] for r in rows] == ["left", "right", "tie", "right", "left", "left"]
    for row, trial in zip(rows, trials):
        assert (row["item"], row["left_method"], row["right_method"]) == (trial["item"], trial["left"], trial["right"])
        assert row["winner"] == {"left": trial["left"], "right": trial["right"], "tie": "tie"}[row["choice"]]
        assert row["participant"] == "ann"
    report = analyse([dict(r) for r in rows])
    assert report.votes == 6 and report.ties == 1
