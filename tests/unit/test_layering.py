"""Which code may import which, and what each package says it exports.

* The agent is what every host installs: it never imports the controller.
* The controller's roles (api, orchestrator, scheduler, dispatcher, network) never import each other's I/O.
  From the controller they import only the shared modules (`controller.store`, `controller.errors`, `controller.ids`,
  `controller.security`) and other roles' pure cores (PURE_CORES): the reconciler's and the scheduler's
  decisions, which the api runs as a dry run for `plan` and whose rollback rule it shares. A pure core does
  no I/O: it imports nothing but the standard library's pure parts, `dockyard` and other pure cores.
  They talk through the store; wiring them together is `controller.server`'s job, which no role imports.
* The product packages (dockyard, agent, controller) never import dev tooling (`deploy`) or `tests`.
* Exports: a package's `__init__.py` "binds a public name" when a module-level statement (outside an
  ``if TYPE_CHECKING:`` block) defines a function or class, assigns a name, or brings one in with
  ``from ... import`` (except from `__future__` and `typing`: those, like plain ``import module``
  lines, bring in tools, not exports), and the name does not start with an underscore. A package that
  loads its exports on first use (a module-level ``__getattr__``, PEP 562) binds the names it imports under
  ``if TYPE_CHECKING:``; the attribute check below proves its ``__getattr__`` really provides them. Every package
  under dockyard/, agent/, controller/ and deploy/ obeys: an `__init__.py` that binds a public name
  declares `__all__`; `__all__` is a literal list or tuple of distinct strings, equal to the set of
  public names the file binds; and each of them is an attribute of the imported package.

Imports are read from the source with `ast`, everywhere in a file (functions and TYPE_CHECKING blocks
too), relative ones resolved; one test also imports every product module and looks at what got loaded.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("dockyard", "agent", "controller")
PACKAGES = (*PRODUCT, "deploy")
ROLES = ("api", "orchestrator", "scheduler", "dispatcher", "network")
# The command channel's interface and the hosts' images are shared as the store is: the dispatcher serves them,
# the api uses them (an image push, a volume removal), controller.server wires the one into the other. The
# volume records' rules (controller.volumes, pure) are shared by the scheduler, the dispatcher and the api.
SHARED_CONTROLLER = (
    "controller.store",
    "controller.errors",
    "controller.ids",
    "controller.security",
    "controller.commands",
    "controller.images",
    "controller.volumes",
    # The data key: the API seals what it stores, the dispatcher unseals what it hands the agents.
    "controller.sealing",
)
# The roles' modules that take their inputs (the time too) and return decisions, with no I/O.
PURE_CORES = tuple(
    f"controller.{name}"
    for name in (
        "orchestrator.depends",
        "orchestrator.edits",
        "orchestrator.nodes",
        "orchestrator.plan",
        "orchestrator.rebalance",
        "orchestrator.reconciler",
        "orchestrator.restart",
        "orchestrator.rollout",
        "scheduler.engine",
        "scheduler.filters",
        "scheduler.model",
        "scheduler.reference",
        "scheduler.scorers",
        "scheduler.stack",
        # Subnet allocation, maps and DNS records: the network role decides with them, the dispatcher sends them.
        "network.allocate",
        "network.dns",
        "network.maps",
    )
)
# What a pure core may import besides dockyard and the other pure cores: no clock, no sockets, no files.
PURE_STDLIB = (
    "__future__",
    "bisect",
    "collections",
    "dataclasses",
    "datetime",
    "enum",
    "functools",
    "hashlib",
    "heapq",
    "ipaddress",
    "itertools",
    "math",
    "typing",
)
# `from` these imports tools for the module itself, never exports.
TOOL_MODULES = ("__future__", "typing")


def run_python(code: str) -> str:
    """Runs `code` in a fresh interpreter at ROOT and returns what it printed; failing, shows its stderr."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def module_name(path: Path) -> str:
    """The dotted module name of a source file under ROOT (a package's `__init__` names the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(*packages: str) -> list[Path]:
    """Every Python file of the given top-level packages."""
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, as dotted names; ``from a import b`` counts as both `a` and `a.b`.

    The second form catches ``from controller import scheduler``; for ``from a import SomeClass`` it names
    no module, which is harmless for prefix checks.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def within(name: str, package: str) -> bool:
    """Whether the dotted `name` is `package` or inside it."""
    return name == package or name.startswith(package + ".")


def role_of(name: str) -> str | None:
    """The controller role a dotted module name belongs to, if any."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "controller" and parts[1] in ROLES:
        return parts[1]
    return None


def test_the_scans_see_every_role_and_resolve_relative_imports(tmp_path: Path) -> None:
    for role in ROLES:
        assert any(role_of(module_name(path)) == role for path in sources("controller")), role
    assert "agent.runtime.base" in imported_names(ROOT / "agent" / "runtime" / "fake.py")
    assert "dockyard.clock.FakeClock" in imported_names(ROOT / "agent" / "testing" / "__init__.py")


def test_agent_sources_never_name_the_controller() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sources("agent")
        for name in sorted(imported_names(path))
        if within(name, "controller")
    ]
    assert offenders == []


def test_controller_roles_never_import_each_other() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources("controller")
        if (own := role_of(module_name(path))) is not None
        for name in role_imports(path)
        if (other := role_of(name)) is not None and other != own and not _pure_core(name)
    ]
    assert offenders == [], "roles talk through the store, never to each other"


def role_imports(path: Path) -> list[str]:
    """The modules a file imports, without a role package named only as the `from` part of importing one of
    its pure cores (``from controller.orchestrator import rollout`` names both)."""
    names = imported_names(path)
    return sorted(
        name
        for name in names
        if not (
            role_of(name) is not None and name.count(".") == 1 and any(_pure_core(n) and within(n, name) for n in names)
        )
    )


def _pure_core(name: str) -> bool:
    """Whether a dotted name is a pure core module or a name inside one (``from ...reconciler import x``)."""
    return any(within(name, core) for core in PURE_CORES)


def test_pure_cores_exist_and_do_no_io() -> None:
    offenders = []
    for core in PURE_CORES:
        path = ROOT / (core.replace(".", "/") + ".py")
        assert path.is_file(), f"{core} is listed as a pure core but does not exist"
        for name in sorted(imported_names(path)):
            top = name.split(".")[0]
            if top == "dockyard" or _pure_core(name) or top in PURE_STDLIB:
                continue
            if name in {"controller", "controller.orchestrator", "controller.scheduler"}:
                continue  # the package part of ``from controller.orchestrator import rollout``
            offenders.append(f"{core} imports {name}")
    assert offenders == [], "a pure core takes its inputs and returns decisions; I/O belongs in the role's shell"


def test_controller_roles_import_only_the_shared_controller_modules() -> None:
    def allowed(name: str, own: str) -> bool:
        return (
            not within(name, "controller")
            or name == "controller"
            or within(name, f"controller.{own}")
            or any(within(name, shared) for shared in SHARED_CONTROLLER)
            or _pure_core(name)
        )

    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources("controller")
        if (own := role_of(module_name(path))) is not None
        for name in role_imports(path)
        if not allowed(name, own)
    ]
    assert offenders == [], f"a role may import only its own package and {', '.join(SHARED_CONTROLLER)}"


def test_product_sources_never_name_dev_tooling_or_tests() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(*PRODUCT)
        for name in sorted(imported_names(path))
        if within(name, "deploy") or within(name, "tests")
    ]
    assert offenders == []


def test_importing_every_product_module_loads_no_dev_tooling_or_tests() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        f"for root in {PRODUCT!r}:\n"
        "    package = importlib.import_module(root)\n"
        "    for info in pkgutil.walk_packages(package.__path__, root + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print(','.join(sorted(n for n in sys.modules if n.split('.')[0] in ('deploy', 'tests'))))\n"
    )
    assert run_python(code) == ""


def test_importing_every_agent_module_loads_no_controller_module() -> None:
    code = (
        "import pkgutil, importlib, sys, agent\n"
        "for m in pkgutil.walk_packages(agent.__path__, 'agent.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'controller' or n.startswith('controller.'))\n"
        "print(','.join(bad))\n"
    )
    assert run_python(code) == ""


# --- __all__ ----------------------------------------------------------------------------------------


def package_inits() -> list[Path]:
    """The `__init__.py` of every package under the checked top-level packages."""
    return [path for path in sources(*PACKAGES) if path.name == "__init__.py"]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run at import, looking into if/try/with blocks but not `if TYPE_CHECKING:`."""
    for statement in body:
        yield statement
        if isinstance(statement, ast.If):
            if not _is_type_checking(statement.test):
                yield from _module_statements(statement.body)
            yield from _module_statements(statement.orelse)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, statement.orelse, statement.finalbody):
                yield from _module_statements(block)
            for handler in statement.handlers:
                yield from _module_statements(handler.body)
        elif isinstance(statement, ast.With):
            yield from _module_statements(statement.body)


def _target_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from _target_names(element)


def _lazy_exports(tree: ast.Module) -> set[str]:
    """The names a module with a module-level `__getattr__` imports under `if TYPE_CHECKING:` (its lazy exports)."""
    if not any(isinstance(s, ast.FunctionDef) and s.name == "__getattr__" for s in tree.body):
        return set()
    return {
        alias.asname or alias.name
        for statement in tree.body
        if isinstance(statement, ast.If) and _is_type_checking(statement.test)
        for inner in statement.body
        if isinstance(inner, ast.ImportFrom)
        for alias in inner.names
    }


def public_bindings(tree: ast.Module) -> set[str]:
    """The public names the module binds, by the rule in this file's docstring."""
    names: set[str] = _lazy_exports(tree)
    for statement in _module_statements(tree.body):
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(statement.name)
        elif isinstance(statement, ast.ImportFrom) and statement.module not in TOOL_MODULES:
            names.update(alias.asname or alias.name for alias in statement.names)
        elif isinstance(statement, ast.Assign):
            for target in statement.targets:
                names.update(_target_names(target))
        elif isinstance(statement, ast.AnnAssign | ast.AugAssign):
            names.update(_target_names(statement.target))
    return {name for name in names if not name.startswith("_")}


def declared_all(tree: ast.Module) -> list[str] | None:
    """The literal value of `__all__`, or None when the module does not declare it."""
    for statement in tree.body:
        assigned: ast.expr | None
        if isinstance(statement, ast.Assign):
            targets, assigned = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign):
            targets, assigned = [statement.target], statement.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            assert assigned is not None, "__all__ is declared without a value"
            value = ast.literal_eval(assigned)
            assert isinstance(value, list | tuple), "__all__ must be a literal list or tuple"
            assert all(isinstance(name, str) for name in value), "__all__ holds names as strings"
            return list(value)
    return None


def test_the_export_rule_reads_what_it_should() -> None:
    tree = ast.parse(
        "from __future__ import annotations\n"
        "import sys\n"
        "from typing import TYPE_CHECKING\n"
        "from a import B, c as d, _e\n"
        "if TYPE_CHECKING:\n"
        "    from f import G\n"
        "try:\n"
        "    from h import I\n"
        "except ImportError:\n"
        "    I = None\n"
        "VERSION, _x = 1, 2\n"
        "def f(): ...\n"
        "__all__ = ['B', 'd']\n"
    )
    assert public_bindings(tree) == {"B", "d", "I", "VERSION", "f"}
    assert declared_all(tree) == ["B", "d"]
    # The same TYPE_CHECKING imports count once a module-level __getattr__ provides them on first use.
    lazy = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import B, c as d\ndef __getattr__(name): ...\n"
    )
    assert public_bindings(lazy) == {"B", "d"}


@pytest.mark.parametrize("init", package_inits(), ids=lambda path: str(path.parent.relative_to(ROOT)))
def test_package_all_lists_exactly_what_the_package_exports(init: Path) -> None:
    tree = ast.parse(init.read_text(encoding="utf-8"), filename=str(init))
    public = public_bindings(tree)
    exported = declared_all(tree)
    if exported is None:
        assert not public, f"{init.relative_to(ROOT)} binds {sorted(public)} but declares no __all__"
        return
    assert len(exported) == len(set(exported)), f"duplicates in __all__: {exported}"
    assert set(exported) == public, (
        f"{init.relative_to(ROOT)}: not in __all__: {sorted(public - set(exported))}; "
        f"in __all__ but not bound: {sorted(set(exported) - public)}"
    )
    package = importlib.import_module(module_name(init))
    missing = [name for name in exported if not hasattr(package, name)]
    assert missing == [], f"{module_name(init)}.__all__ names what it lacks: {missing}"
