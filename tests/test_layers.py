"""The import graph of zsharm/: every module read with `ast` (imports inside functions and under TYPE_CHECKING
count as much as those at the top), then three rules.

(a) No module imports one above it in LAYERS, the order below, bottom first.
(b) Stage 2 (edit/) imports neither stage 1 (describe/) nor stage 3 (decide/): the edit is the method's
    deterministic core and runs alone (notebooks 02-06, tests/test_reference.py).
(c) No import cycle among the modules.

A module is placed by the longest entry of LAYERS that names it or a package above it. Not seen: imports by name
at run time (zsharm/__init__.py's lazy `Harmonizer`, importlib), which this graph cannot follow.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zsharm"

LAYERS = [
    ("foundations", ["zsharm", "zsharm.errors", "zsharm.vocabulary", "zsharm.quiet", "zsharm.bars", "zsharm.demo",
                     "zsharm.distributed", "zsharm.toy", "zsharm.toy.world"]),
    ("configuration, files, cache", ["zsharm.config", "zsharm.io", "zsharm.cache"]),
    ("model folders", ["zsharm.model_folders", "zsharm.toy.prior"]),
    ("loading models", ["zsharm.models"]),
    ("stage 1: describe", ["zsharm.describe"]),
    ("batch folders", ["zsharm.batch"]),
    ("stage 2: edit", ["zsharm.edit"]),
    ("stage 3: decide", ["zsharm.decide"]),
    ("checks before a model loads", ["zsharm.validate"]),
    # the methods it measures are handed in (zsharm.harmonizer.zsharm_method, built by the evaluate command)
    ("measuring methods", ["zsharm.quality"]),
    ("the three stages together", ["zsharm.harmonizer"]),
    ("wing: reproduction", ["zsharm.repro"]),
    ("wing: teaching", ["zsharm.teaching"]),
    ("wing: the toy prior's lab", ["zsharm.toy_lab"]),
    ("the command line", ["zsharm.commands", "zsharm.__main__"]),
]
STAGE_2, NOT_FROM_STAGE_2 = "zsharm.edit", ("zsharm.describe", "zsharm.decide")


def module_files(package: Path = PACKAGE) -> dict:
    """Dotted module name -> its file, for every .py under `package` (a package by its __init__.py)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, known) -> set:
    """The zsharm modules `name` imports anywhere in its file. `from a.b import c` counts as a.b.c when that is
    a module, else as a.b; relative imports are resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
    return {m for m in found if m in known and m != name}


def import_graph(package: Path = PACKAGE) -> dict:
    modules = module_files(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest entry naming `module` or a package above it."""
    best, length = None, -1
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > length:
                best, length = index, len(entry)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return best


def upward_imports(graph) -> list:
    return sorted(f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
                  for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def stage_2_crossings(graph) -> list:
    return sorted(f"{a} imports {b}" for a, targets in graph.items() if a == STAGE_2 or a.startswith(STAGE_2 + ".")
                  for b in targets if any(b == s or b.startswith(s + ".") for s in NOT_FROM_STAGE_2))


def cycles(graph) -> list:
    """One cycle per strongly connected component of more than one module (Tarjan), each as a path."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_path_within(graph, sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path_within(graph, component) -> str:
    """A cycle through the first module of a strongly connected component, by breadth-first search."""
    start, members = component[0], set(component)
    previous, queue = {start: None}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return " -> ".join(reversed(path)) + f" -> {start}"
            if w not in previous:
                previous[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_is_in_a_layer_and_every_layer_entry_exists(graph):
    for module in graph:
        layer_of(module)
    names = set(graph)
    missing = [entry for _, entries in LAYERS for entry in entries if entry not in names]
    assert not missing, f"LAYERS names modules that are gone: {missing}"


def test_no_module_imports_one_above_it(graph):
    found = upward_imports(graph)
    assert not found, "imports up the layering:\n" + "\n".join(found)


def test_stage_2_imports_neither_stage_1_nor_stage_3(graph):
    found = stage_2_crossings(graph)
    assert not found, "stage 2 reaches another stage:\n" + "\n".join(found)


def test_no_import_cycle(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_graph_sees_imports_inside_functions_and_relative_ones(tmp_path):
    package = tmp_path / "zsharm"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .. import low\n")
    (package / "sub" / "high.py").write_text("def f():\n    from zsharm.sub import low_too\n    import zsharm.low\n")
    (package / "sub" / "low_too.py").write_text("from ..sub import high\n")
    found = import_graph(package)
    assert found["zsharm.sub"] == {"zsharm.low"}
    assert found["zsharm.sub.high"] == {"zsharm.sub.low_too", "zsharm.low"}
    assert cycles(found) == ["zsharm.sub.high -> zsharm.sub.low_too -> zsharm.sub.high"]


def test_the_readme_layout_names_every_module_and_folder_where_it_is():
    """README's Layout block: an entry a line that starts two spaces in; a folder's entry (`edit/ ...`) names each
    of its modules (its __init__.py aside), the other entries the top-level ones, and none a module that is not
    there."""
    import re
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    entries, current = [], None
    for line in block.splitlines()[2:]:  # after the fence's language and `zsharm/`
        if re.match(r"  \S", line):
            current = [line.strip()]
            entries.append(current)
        elif current is not None:
            current.append(line.strip())
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    drawn = {}
    for entry in entries:
        head = entry[0].split()[0].rstrip(",")
        key = head.rstrip("/") if head.endswith("/") else ""
        drawn.setdefault(key, set()).update(re.findall(r"(?<![\w/.])(\w+\.py)\b", " ".join(entry)))
    for named in list(drawn.values()):  # `python -m zsharm` is drawn with the command line it starts
        if "__main__.py" in named:
            named.discard("__main__.py")
            drawn[""].add("__main__.py")
    assert folders == set(drawn) - {""}, "folders the Layout leaves out, or draws that are gone"
    for folder, named in drawn.items():
        if folder != "assets":
            there = {p.name for p in (PACKAGE / folder).glob("*.py")} - ({"__init__.py"} if folder else set())
            assert named == there, f"zsharm/{folder}: Layout names {sorted(named - there)}, not {sorted(there - named)}"
