"""The package's import layering, read from the source with ``ast`` (nothing is imported).

Stages, lowest first: data -> models -> training | inference -> segmentation
-> volumes -> export -> cli | napari (plus small shared modules: checks,
choices, io, pretrained, ...). A stage must not import from a stage
above it. Checked here:

1. nothing in ``inference/`` imports ``export/`` (loading and running model
   files is ``inference.backends``; export only writes them);
2. ``inference`` and ``training`` (the same stage) do not import each other,
   except the lazy imports in ``ALLOWED_TRAINING_TO_INFERENCE``;
3. no import cycle between ``fusionnet_tf`` subpackages (each top-level module
   counts as one): none through module-level imports, and none through lazy
   (function-level) imports except over the edges in ``ALLOWED_LAZY_CYCLE_EDGES``;
4. every import points up ``LAYERS`` (the order the README's Layout drawing
   shows), and every subpackage and top-level module has a layer there.

An import counts wherever it is written: at module level, in a class body,
in a function (``lazy``), or as a module named in a package ``_LAZY`` map
(``fusionnet_tf.lazy``; lazy). The root package's ``_LAZY`` map is its
public facade (``fusionnet_tf.Predictor``, ...) and is left out: modules
import the root only for ``__version__``.
"""

import ast
import dataclasses
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "fusionnet_tf"
ROOT = "fusionnet_tf"

# (module, why): lazy imports of inference by training that are allowed. IsbiEvaluation scores
# whole validation slices during fit with the same overlap-tile Predictor as `fusionnet predict`
# (a sibling stage; inference never imports training, so this forms no cycle).
ALLOWED_TRAINING_TO_INFERENCE = {
    "fusionnet_tf.training.callbacks": "IsbiEvaluation predicts validation slices with Predictor",
}

# (importing node, imported node): lazy edges allowed to close a cycle (none today: the spec
# parser and the HDF5 key lookup moved down from data.readers into io)
ALLOWED_LAZY_CYCLE_EDGES = {}


# The layers, lowest first, as README.md's "Layout" draws them; a module may import only
# from its own layer or one before it (training -> inference: ALLOWED_TRAINING_TO_INFERENCE).
LAYERS = (
    ("services", ("_compat", "backend", "lazy", "checks", "choices", "dihedral", "pretrained",
                  "predict_options", "io", "metrics")),
    ("data", ("data",)),
    ("models", ("models",)),
    ("inference | training", ("inference", "training")),
    ("volumes", ("volumes",)),
    ("segmentation", ("segmentation",)),
    ("export", ("export",)),
    ("entry points", ("cli", "napari", "__main__")),
)


@dataclasses.dataclass(frozen=True)
class Import:
    """One import of a fusionnet_tf module: who imports what, where, and whether lazily."""

    source: str  # importing module, e.g. "fusionnet_tf.inference.predictor"
    target: str  # imported module (or package), e.g. "fusionnet_tf.export.onnx"
    line: int
    lazy: bool  # inside a function, or named in a _LAZY map

    @property
    def where(self):
        return f"{self.source}:{self.line}{' (lazy)' if self.lazy else ''}"


def node(module):
    """Subpackage (or top-level module) of a dotted module name; ``ROOT`` for the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def module_name(path, package_dir):
    """Dotted name of the module in ``path`` (a package's ``__init__.py`` -> the package)."""
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_submodule(package_dir, dotted):
    relative = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    base = package_dir / relative
    return base.is_dir() or base.with_suffix(".py").is_file()


def _targets(statement, module, is_package, package_dir):
    """Dotted fusionnet_tf modules an ``import`` / ``from ... import`` statement loads."""
    root = package_dir.name
    if isinstance(statement, ast.Import):
        return [alias.name for alias in statement.names if node_root(alias.name) == root]
    if statement.level:  # relative: from the importing module's package upwards
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - statement.level + 1]
        base = ".".join(package + ([statement.module] if statement.module else []))
    else:
        base = statement.module or ""
    if node_root(base) != root:
        return []
    # `from fusionnet_tf.x import y` loads the submodule x.y when y is one
    return [f"{base}.{alias.name}" if _is_submodule(package_dir, f"{base}.{alias.name}")
            else base for alias in statement.names]


def node_root(dotted):
    return dotted.split(".")[0]


def _lazy_map_targets(statement, root):
    """Modules named in a module-level ``_LAZY = {...}`` map."""
    if not (isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Dict)
            and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in statement.targets)):
        return []
    return [value.value for value in statement.value.values
            if isinstance(value, ast.Constant) and isinstance(value.value, str)
            and node_root(value.value) == root]


def package_imports(package_dir=PACKAGE_DIR):
    """Every import of a module of the package, from every ``.py`` file in it.

    Returns:
        list of ``Import``.
    """
    package_dir = Path(package_dir)
    imports = []
    for path in sorted(package_dir.rglob("*.py")):
        module = module_name(path, package_dir)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))

        def visit(parent, lazy):
            for child in ast.iter_child_nodes(parent):
                inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda))
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, module, is_package, package_dir):
                        imports.append(Import(module, target, child.lineno, inner))
                elif not lazy and module != package_dir.name:  # the root's _LAZY: its facade
                    for target in _lazy_map_targets(child, package_dir.name):
                        imports.append(Import(module, target, child.lineno, True))
                visit(child, inner)

        visit(tree, False)
    return imports


def cross_node_imports(imports):
    """The imports whose source and target lie in different subpackages."""
    return [i for i in imports if node(i.source) != node(i.target)]


def strongly_connected(edges):
    """Node sets of the cycles (strongly connected components of 2+ nodes) of ``edges``."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    order, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v):  # Tarjan's algorithm
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in order:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in order:
            connect(v)
    return components


def cycle_report(imports):
    """One line per cycle between subpackages, listing the imports that close it."""
    lines = []
    for component in strongly_connected({(node(i.source), node(i.target)) for i in imports}):
        inside = [i.where + f" -> {i.target}" for i in imports
                  if node(i.source) in component and node(i.target) in component]
        lines.append(f"cycle {sorted(component)}: " + "; ".join(sorted(inside)))
    return lines


# === Rules ===

def inference_export_violations(imports):
    return [f"{i.where} imports {i.target}" for i in imports
            if node(i.source) == "inference" and node(i.target) == "export"]


def training_inference_violations(imports, allowed=ALLOWED_TRAINING_TO_INFERENCE):
    found = []
    for i in imports:
        pair = (node(i.source), node(i.target))
        if pair == ("inference", "training"):
            found.append(f"{i.where} imports {i.target}")
        elif pair == ("training", "inference") and not (i.source in allowed and i.lazy):
            found.append(f"{i.where} imports {i.target}")
    return found


def cycle_violations(imports, allowed=ALLOWED_LAZY_CYCLE_EDGES):
    """Cycles through module-level imports, and through lazy imports outside ``allowed``."""
    crossing = cross_node_imports(imports)
    module_level = [i for i in crossing if not i.lazy]
    found = ["module-level " + line for line in cycle_report(module_level)]
    checked = [i for i in crossing if i.lazy is False
               or (node(i.source), node(i.target)) not in allowed]
    found += cycle_report(checked) if not found else []
    return found


def layer_violations(imports, layers=LAYERS):
    """Imports from a later layer into an earlier one, and nodes that have no layer."""
    rank = {name: index for index, (_, names) in enumerate(layers) for name in names}
    found = []
    for i in cross_node_imports(imports):
        source, target = node(i.source), node(i.target)
        if ROOT in (source, target) or "__version__" in (source, target):
            continue  # the root facade, and `from fusionnet_tf import __version__`
        for name in (source, target):
            if name not in rank:
                found.append(f"{i.where}: '{name}' has no layer in LAYERS (and the README)")
        if source in rank and target in rank and rank[target] > rank[source]:
            found.append(f"{i.where} imports {i.target}, a later layer")
    return sorted(set(found))


@pytest.fixture(scope="module")
def imports():
    found = package_imports()
    # the scan sees the package: a parser that found nothing would pass every rule
    assert any(i.source == "fusionnet_tf.export.onnx" and node(i.target) == "inference"
               for i in found)
    assert any(i.source.startswith("fusionnet_tf.inference.predictor")
               and i.target.startswith("fusionnet_tf.inference.backends") for i in found)
    return found


def test_inference_does_not_import_export(imports):
    assert inference_export_violations(imports) == []


def test_training_and_inference_do_not_import_each_other(imports):
    assert training_inference_violations(imports) == []


def test_no_import_cycle_between_subpackages(imports):
    assert cycle_violations(imports) == []


def test_imports_point_up_the_layers(imports):
    assert layer_violations(imports) == []


def test_readme_layout_draws_every_layer():
    """The README's Layout block names each package of ``LAYERS`` in the same order."""
    text = (PACKAGE_DIR.parent / "README.md").read_text()
    block = text[text.index("### Layout"):]
    block = block[block.index("```text"):block.index("```", block.index("```text") + 7)]
    packages = [name for _, names in LAYERS for name in names
                if (PACKAGE_DIR / name).is_dir()]
    where = [block.index(f"  {name}/") if f"  {name}/" in block else block.index(f" {name}/")
             for name in packages]
    assert where == sorted(where), packages


def test_allowed_exceptions_are_lazy_and_still_needed(imports):
    """Each listed exception exists and is lazy; a module-level one, or a stale entry, fails."""
    crossing = cross_node_imports(imports)
    for source in ALLOWED_TRAINING_TO_INFERENCE:
        used = [i for i in crossing if i.source == source and node(i.target) == "inference"]
        assert used and all(i.lazy for i in used), f"{source}: {[i.where for i in used]}"
    for pair in ALLOWED_LAZY_CYCLE_EDGES:
        used = [i for i in crossing if (node(i.source), node(i.target)) == pair]
        assert used and all(i.lazy for i in used), f"{pair}: {[i.where for i in used]}"
        cycles = strongly_connected({(node(i.source), node(i.target)) for i in crossing})
        assert any(set(pair) <= cycle for cycle in cycles), \
            f"{pair} no longer closes a cycle: remove it from ALLOWED_LAZY_CYCLE_EDGES"


# === The checker itself, on a made-up package ===

def _write_package(root, files):
    for name, text in files.items():
        path = root / "fusionnet_tf" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "fusionnet_tf"


CLEAN = {
    "__init__.py": "from fusionnet_tf.lazy import lazy_attributes\n"
                   "_LAZY = {'Predictor': 'fusionnet_tf.inference'}\n",
    "lazy.py": "",
    "checks.py": "",
    "inference/__init__.py": "from fusionnet_tf.inference.predictor import Predictor\n",
    "inference/predictor.py": "from fusionnet_tf import checks\n"
                              "from .backends import load_model\n",
    "inference/backends/__init__.py": "def load_model(path):\n    return path\n",
    "training/__init__.py": "",
    "training/callbacks.py": "def scores():\n    from fusionnet_tf.inference import Predictor\n",
    "export/__init__.py": "_LAZY = {'OnnxRunner': 'fusionnet_tf.inference.backends'}\n",
    "export/onnx.py": "import fusionnet_tf\n"
                      "from fusionnet_tf.inference.backends import load_model\n",
}


def test_checker_reads_every_import_form(tmp_path):
    imports = package_imports(_write_package(tmp_path, CLEAN))
    found = {(i.source, i.target, i.lazy) for i in imports}
    assert ("fusionnet_tf.inference.predictor", "fusionnet_tf.checks", False) in found
    assert ("fusionnet_tf.inference.predictor", "fusionnet_tf.inference.backends", False) in found
    assert ("fusionnet_tf.training.callbacks", "fusionnet_tf.inference", True) in found
    assert ("fusionnet_tf.export", "fusionnet_tf.inference.backends", True) in found
    assert ("fusionnet_tf.export.onnx", "fusionnet_tf", False) in found
    assert not any(i.source == "fusionnet_tf" and i.target == "fusionnet_tf.inference"
                   for i in imports)  # the root facade is left out
    allowed = {"fusionnet_tf.training.callbacks": "test"}
    assert inference_export_violations(imports) == []
    assert training_inference_violations(imports, allowed) == []
    assert cycle_violations(imports, {}) == []
    assert layer_violations(imports) == []


@pytest.mark.parametrize("name,text,rule", [
    # the old predictor: runners fetched lazily from export
    ("inference/predictor.py", "def load(p):\n    from fusionnet_tf.export.onnx import x\n",
     "export"),
    ("inference/__init__.py", "_LAZY = {'OnnxRunner': 'fusionnet_tf.export.onnx'}\n", "export"),
    # the old optimize: a training constant at module level
    ("inference/optimize.py", "from fusionnet_tf.training.strategy import PRECISIONS\n",
     "training"),
    ("training/run.py", "def fit():\n    from fusionnet_tf.inference import Predictor\n",
     "training"),
    ("training/callbacks.py", "from fusionnet_tf.inference import Predictor\n", "training"),
    ("inference/tiling.py", "import fusionnet_tf.training.config\n", "training"),
    # export -> inference exists, so any lazy inference -> export import closes a cycle too
    ("inference/writers.py", "def w():\n    from fusionnet_tf.export import saved_model\n",
     "cycle"),
    ("checks.py", "from fusionnet_tf.inference import tiling\n", "module-level cycle"),
    ("checks.py", "def c():\n    from fusionnet_tf.export import onnx\n", "cycle"),
    # a stage reaching down the data flow, and a new package left out of the layers
    ("models/fusionnet.py", "def f():\n    from fusionnet_tf.segmentation import x\n", "layer"),
    ("newstage/__init__.py", "from fusionnet_tf import checks\n", "layer"),
])
def test_checker_catches_a_reintroduced_import(tmp_path, name, text, rule):
    files = dict(CLEAN)
    files[name] = files.get(name, "") + text
    imports = package_imports(_write_package(tmp_path, files))
    allowed = {"fusionnet_tf.training.callbacks": "test"}
    found = {
        "export": inference_export_violations(imports),
        "training": training_inference_violations(imports, allowed),
        "cycle": cycle_violations(imports, {}),
        "layer": layer_violations(imports),
    }
    key = "cycle" if "cycle" in rule else rule
    assert found[key], f"{rule} not caught: {found}"
    if rule == "module-level cycle":
        assert found["cycle"][0].startswith("module-level cycle")


def test_allowed_lazy_edge_is_skipped_only_when_lazy(tmp_path):
    files = dict(CLEAN)
    files["checks.py"] = "def c():\n    from fusionnet_tf.export import onnx\n"
    imports = package_imports(_write_package(tmp_path, files))
    assert cycle_violations(imports, {("checks", "export"): "test"}) == []
    files["checks.py"] = "from fusionnet_tf.export import onnx\n"
    imports = package_imports(_write_package(tmp_path / "b", files))
    assert cycle_violations(imports, {("checks", "export"): "test"})
