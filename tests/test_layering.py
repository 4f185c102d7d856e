"""The folder layout is the architecture: data flows from data_connectors through core into apps, never back."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"data_connectors": ("core", "apps"), "core": ("apps",)}


def _imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(layer):
    offenders = [f"{p.relative_to(ROOT)} imports {bad}" for p in sorted((ROOT / layer).rglob("*.py"))
                 for bad in sorted(_imported_packages(p) & set(FORBIDDEN[layer]))]
    assert not offenders, offenders
