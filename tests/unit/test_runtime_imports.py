"""Keeps aiodocker behind the runtime protocol (only the Docker adapter imports it) and the testing kit light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "controller", "dockyard")
# Generated protocol code, not ours to police.
EXCLUDED = (ROOT / "dockyard" / "v1",)
ALLOWED = {Path("agent/runtime/docker.py")}


def imported_modules(source: Path) -> set[str]:
    """Every absolute module name the file imports, anywhere in it (functions and TYPE_CHECKING too)."""
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def python_sources() -> list[Path]:
    """The project's own Python files."""
    sources = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not any(path.is_relative_to(excluded) for excluded in EXCLUDED):
                sources.append(path)
    return sources


def test_the_scan_sees_the_docker_adapter() -> None:
    assert ROOT / "agent" / "runtime" / "docker.py" in python_sources()
    assert "aiodocker" in imported_modules(ROOT / "agent" / "runtime" / "docker.py")


def test_only_the_docker_adapter_imports_aiodocker() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in python_sources()
        if path.relative_to(ROOT) not in ALLOWED
        and any(name == "aiodocker" or name.startswith("aiodocker.") for name in imported_modules(path))
    ]
    assert offenders == [], f"only agent/runtime/docker.py may import aiodocker: {offenders}"


def test_the_testing_kit_imports_without_pytest_or_aiodocker() -> None:
    # agent.testing is product code an adapter's author imports; it must not drag in test tools or Docker.
    code = (
        "import sys\n"
        "class NoPytest:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pytest', '_pytest'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, NoPytest())\n"
        "import agent.testing\n"
        "loaded = sorted(n for n in sys.modules if n.split('.')[0] in ('aiodocker', '_pytest'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == ""
