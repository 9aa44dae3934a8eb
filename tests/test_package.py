"""The public surface: subpackages reachable from ``lens_pivotal``, curated ``__all__``s, tutorials on public names."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import lens_pivotal as lp

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = [
    "lens_pivotal", "lens_pivotal.attributions", "lens_pivotal.patchscope", "lens_pivotal.probes", "lens_pivotal.pts", "lens_pivotal.resid", "lens_pivotal.steering", "lens_pivotal.viz",
]


def test_subpackages_are_reachable_as_attributes():
    assert lp.patchscope.load_relation("country_capital_city").name == "country_capital_city"
    assert callable(lp.probes.plot_layer_metrics) and callable(lp.pts.prompt_token_ids) and callable(lp.viz.save_figure)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_every_name_exists(name):
    module = __import__(name, fromlist=["__all__"])
    assert module.__all__ == sorted(module.__all__)
    assert [item for item in module.__all__ if not hasattr(module, item)] == []


def tutorial_imports(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    source = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
    source = "\n".join(line for line in source.splitlines() if not line.startswith(("%", "!")))
    return [node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom) and node.module]


@pytest.mark.parametrize("path", sorted((ROOT / "tutorials").glob("*.ipynb")), ids=lambda path: path.name)
def test_tutorials_import_only_public_modules(path):
    ours = [module for module in tutorial_imports(path) if module.startswith("lens_pivotal")]
    assert ours and [module for module in ours if module not in PUBLIC_MODULES] == []


def test_no_public_text_names_a_recipe_after_a_seed_project():
    texts = [*(ROOT / "lens_pivotal").rglob("*.py"), *(ROOT / "tutorials").glob("*.ipynb"), ROOT / "README.md"]
    found = [str(path.relative_to(ROOT)) for path in texts if re.search(r"\bseed[ _]?[ab]\b", path.read_text(), re.I)]
    assert found == []


def module_imports(path: Path) -> set[str]:
    """Modules of lens_pivotal that ``path`` imports anywhere: at the top, inside functions, and under
    ``if TYPE_CHECKING:`` (a type-only import is a dependency too, and hides a cycle from the interpreter only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lens_pivotal"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lens_pivotal")}
    return found


def test_no_import_cycles_between_modules():
    files = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / "lens_pivotal").rglob("*.py")
    }
    graph = {name: {target for target in module_imports(path) if target in files and target != name} for name, path in files.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> list[str] | None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return [*trail, name, target]
            if target not in state and (cycle := visit(target, [*trail, name])):
                return cycle
        state[name] = "done"
        return None

    cycles = [cycle for name in sorted(files) if name not in state and (cycle := visit(name, []))]
    assert cycles == []
