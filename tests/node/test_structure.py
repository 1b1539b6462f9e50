"""The shape of the code, checked: the migration engine is one package
whose modules import each other without cycles and use no other module's
private names; the kernel imports nothing from trio; proto imports nothing
of node; no function hides an import inside itself, and no import
anywhere (a command's deferred ones included) closes a cycle."""
import ast
import importlib
from pathlib import Path

import jmig

ROOT = Path(jmig.__file__).parent
PACKAGE = ROOT / "node" / "migration"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not module.endswith("__init__"):
        base = base[:len(base) - node.level]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path):
    """(imported module, names, lineno, inside a function?) of every import."""
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    is_pkg = path.name == "__init__.py"
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(x) for f in funcs for x in ast.walk(f) if x is not f}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            mod = _resolve(module + (".__init__" if is_pkg else ""), n)
            yield mod, [a.name for a in n.names], n.lineno, id(n) in inner
        elif isinstance(n, ast.Import):
            for a in n.names:
                yield a.name, [], n.lineno, id(n) in inner


def test_the_migration_package_imports():
    m = importlib.import_module("jmig.node.migration")
    assert m.Migrations and m.MigrationError and m.Hold


def test_no_module_of_the_migration_package_imports_another_modules_private_names():
    bad = []
    for path in PACKAGE.glob("*.py"):
        for mod, names, line, _ in _imports(path):
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    bad.append(f"{path.name}:{line} imports {name} from {mod}")
        tree = ast.parse(path.read_text())
        for n in ast.walk(tree):
            # other_module._private (but not self._x / cls._x / obj._x on locals)
            if isinstance(n, ast.Attribute) and n.attr.startswith("_") \
                    and not n.attr.startswith("__") and isinstance(n.value, ast.Name) \
                    and n.value.id in ("session", "origin", "pager", "normal", "pgfault",
                                       "precopy", "jobs", "engine", "link", "filelink",
                                       "stream", "base"):
                bad.append(f"{path.name}:{n.lineno} uses {n.value.id}.{n.attr}")
    assert not bad, "\n".join(bad)


def test_the_migration_package_has_no_import_cycle():
    graph: dict[str, set[str]] = {}
    prefix = "jmig.node.migration"
    for path in PACKAGE.glob("*.py"):
        me = _module_name(path)
        graph[me] = {mod for mod, *_ in _imports(path)
                     if mod.startswith(prefix + ".") and mod != me}
    seen, stack = set(), set()

    def visit(n, trail):
        if n in stack:
            raise AssertionError("import cycle: " + " -> ".join(trail + [n]))
        if n in seen:
            return
        stack.add(n)
        for m in graph.get(n, ()):
            visit(m, trail + [n])
        stack.discard(n)
        seen.add(n)
    for n in graph:
        visit(n, [])


def test_layers_keep_their_distance():
    bad = []
    for path in (ROOT / "kernel").rglob("*.py"):
        for mod, _, line, _ in _imports(path):
            if mod.split(".")[0] == "trio" or mod.startswith("jmig.node") \
                    or mod.startswith("jmig.proto"):
                bad.append(f"kernel/{path.relative_to(ROOT / 'kernel')}:{line} imports {mod}")
    for path in (ROOT / "proto").rglob("*.py"):
        for mod, _, line, _ in _imports(path):
            if mod.startswith("jmig.node") or mod.startswith("jmig.ctl"):
                bad.append(f"proto/{path.name}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_node_hides_no_import_inside_a_function():
    bad = []
    for path in [*(ROOT / "node").rglob("*.py"), *(ROOT / "proto").rglob("*.py")]:
        for mod, _, line, inner in _imports(path):
            if inner:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod} inside a function")
    assert not bad, "\n".join(bad)


def _graph_of(paths) -> dict[str, set[str]]:
    """module -> jmig modules it imports, at the top or inside a function
    (imports only for type checkers, under `if TYPE_CHECKING:`, left out)."""
    graph: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text())
        typing_only = {id(x) for n in ast.walk(tree) if isinstance(n, ast.If)
                       and getattr(n.test, "id", "") == "TYPE_CHECKING" for x in ast.walk(n)}
        me = _module_name(path)
        mods = set()
        for n in ast.walk(tree):
            if id(n) in typing_only:
                continue
            if isinstance(n, ast.ImportFrom):
                base = _resolve(me + (".__init__" if path.name == "__init__.py" else ""), n)
                # `from . import x` names a module x of the package
                mods.update(f"{base}.{a.name}" if f"{base}.{a.name}" in _ALL else base
                            for a in n.names)
            elif isinstance(n, ast.Import):
                mods.update(a.name for a in n.names)
        graph[me] = {m for m in mods if m in _ALL and m != me}
    return graph


_ALL = {_module_name(p) for p in ROOT.rglob("*.py")}


def test_no_import_inside_a_function_hides_a_cycle():
    """Some commands import their modules when run (jmigctl's startup time);
    none of those imports, nor any other, closes a cycle between modules."""
    graph = _graph_of(list(ROOT.rglob("*.py")))
    done, stack = set(), []

    def visit(n):
        if n in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
        if n in done:
            return
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            visit(m)
        stack.pop()
        done.add(n)
    for n in sorted(graph):
        visit(n)
