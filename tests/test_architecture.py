"""The layering DEVELOPERS.md describes holds: no import cycles (function-local imports count), and
no class grows past about 250 lines. import-linter checks the layer contracts (scripts/test.sh)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parent.parent / "src" / "featuretree"


def test_no_module_is_in_an_import_cycle():
    graph = grimp.build_graph("featuretree", exclude_type_checking_imports=True)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append(" -> ".join((importer, *back)))
    assert not cycles, "\n".join(cycles)


def test_the_cycle_check_sees_function_local_imports(tmp_path, monkeypatch):
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclic", exclude_type_checking_imports=True, cache_dir=None)
    assert graph.find_shortest_chain(importer="cyclic.b", imported="cyclic.a") == ("cyclic.b", "cyclic.a")


def test_no_class_is_over_250_lines():
    long = []
    for file in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                long.append(f"{file.relative_to(SRC)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
