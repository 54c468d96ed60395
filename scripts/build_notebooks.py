"""Build notebooks/*.ipynb from their sources, scripts/notebooks/*.py, with no outputs.

    python scripts/build_notebooks.py            # rewrite notebooks/NN_*.ipynb
    python scripts/build_notebooks.py --check    # exit 1 if a committed notebook (or docs/costs.md) differs

A source is a Python file in jupytext's "percent" format, read by jupytext (so editors, jupytext's pairing and
this builder see the same cells): `# %%` starts a code cell, `# %% [markdown]` a markdown cell (its lines start
with "# "), and `# %% tags=["parameters"]` the papermill parameters cell; in code, `# %magic` lines are IPython
magics. What jupytext alone cannot give is added here: the cell titled `# %% install` stands for the cell every
notebook shares (on Colab, fetch zsharm, code and data, and `%pip install` it; elsewhere, nothing). `# %% cost {json}` becomes the notebook's one-line cost
(zsharm.teaching.setup.cost_markdown with those arguments), and its arithmetic a section of docs/costs.md. Every notebook's first cell gets a Colab badge
after its title.

REPOSITORY below is the one place naming the project's public home: a fork changes it and rebuilds.
Cell ids are fixed (cell-00, cell-01, ...), so a rebuild of an unchanged source gives the same bytes.
"""

import argparse
import json
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's zsharm (the cost paragraphs), whatever is installed
SOURCES = REPO / "scripts" / "notebooks"
OUT = REPO / "notebooks"
COSTS = REPO / "docs" / "costs.md"
# The one place naming the repository (Colab badges, the install cell). A fork changes these two lines and
# runs `python scripts/build_notebooks.py`.
REPOSITORY = "https://github.com/zsharm/zsharm"
BRANCH = "main"

INSTALL_CELL = f'''# On Colab only: fetch zsharm (code and data) and install it with its own requirements, once. Elsewhere,
# install zsharm first (see notebooks/README.md) and this cell does nothing.
import os
import sys

if "google.colab" in sys.modules and not os.path.isfile("../pyproject.toml"):
    if not os.path.isdir("zsharm"):
        !git clone --depth 1 --branch {BRANCH} {REPOSITORY} zsharm
    %pip install -q -e ./zsharm
    sys.path.insert(0, os.path.abspath("zsharm"))
    os.chdir("zsharm/notebooks")'''


def colab_badge(name: str) -> str:
    path = REPOSITORY.split("github.com/", 1)[1]
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{path}/blob/{BRANCH}/notebooks/{name}.ipynb)")


def parse(text: str) -> list:
    """[(kind, source, tags)] of a percent-format file, read by jupytext; kind is "code" or "markdown". The two
    cells titled `install` and `cost` become the shared install cell and the one-line cost."""
    import jupytext
    cells = []
    for cell in jupytext.reads(text, fmt="py:percent").cells:
        # jupytext's own layout keys (blank lines kept for a round trip) are not ours
        meta = {k: v for k, v in cell.metadata.items() if not k.startswith("lines_to_")}
        title = meta.pop("title", None)
        if title == "install":
            cells.append(("code", INSTALL_CELL, []))
        elif title == "cost":
            from zsharm.teaching.setup import cost_markdown
            cells.append(("markdown", cost_markdown(**meta), []))
        elif title is not None or set(meta) - {"tags"}:
            raise ValueError(f"unknown cell marker: title {title!r}, metadata {meta}")
        else:
            cells.append((cell.cell_type, cell.source, meta.get("tags", [])))
    return cells


def cost_arguments(text: str) -> dict:
    """The `# %% cost {json}` cell's arguments (cost_markdown's), as jupytext reads them."""
    import jupytext
    for cell in jupytext.reads(text, fmt="py:percent").cells:
        if cell.metadata.get("title") == "cost":
            return {k: v for k, v in cell.metadata.items() if k != "title" and not k.startswith("lines_to_")}
    raise ValueError("no '# %% cost' cell")


def build(source: Path) -> str:
    """The notebook JSON (no outputs, fixed ids) for one source file."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, (kind, body, tags) in enumerate(parse(source.read_text())):
        if i == 0 and kind == "markdown":
            title, _, rest = body.partition("\n")
            body = f"{title}\n\n{colab_badge(source.stem)}\n{rest}"
        cell = nbformat.v4.new_markdown_cell(body) if kind == "markdown" else nbformat.v4.new_code_cell(body)
        cell.id = f"cell-{i:02d}"
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def cost_section(source: Path) -> str:
    """The source's section of docs/costs.md, from its `# %% cost {json}` cell."""
    from zsharm.teaching.setup import cost_details
    return cost_details(source.stem, **cost_arguments(source.read_text()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with notebooks/ instead of writing")
    args = parser.parse_args(argv)
    from zsharm.teaching.setup import costs_document
    stale = []
    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    outputs = [(OUT / (source.stem + ".ipynb"), build(source)) for source in sources]
    outputs.append((COSTS, costs_document([cost_section(source) for source in sources])))
    for target, text in outputs:
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(target.name)
        else:
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(text)
            tmp.replace(target)
            print(target.relative_to(REPO))
    if stale:
        print("out of date (run python scripts/build_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
