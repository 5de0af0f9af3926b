"""Regenerates the checked-in Python code and stubs from protos/ (run after editing a .proto)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = ROOT / "dockyard" / "v1"


def generate(out_dir: Path) -> None:
    """Writes the generated package for every .proto under protos/ into out_dir/dockyard/v1."""
    include = Path(protoc.__file__).parent / "_proto"
    # protoc finds the mypy plugins on PATH; they live beside this interpreter in a virtual environment.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_dir / "dockyard" / "v1" / "__init__.py").write_text('"""Generated from protos/dockyard/v1; do not edit."""\n')


def stale_files() -> list[str]:
    """Returns the generated files that differ from what the .proto files generate now."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "dockyard" / "v1"
        names = {p.name for p in fresh.iterdir()} | {p.name for p in OUT_PACKAGE.iterdir() if p.is_file()}
        return sorted(
            name
            for name in names
            if not (OUT_PACKAGE / name).exists()
            or not (fresh / name).exists()
            or (OUT_PACKAGE / name).read_bytes() != (fresh / name).read_bytes()
        )


def main() -> None:
    if "--check" in sys.argv[1:]:
        stale = stale_files()
        if stale:
            raise SystemExit(f"generated protocol code is stale: {stale}; run python scripts/gen_protos.py")
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        src = Path(tmp) / "dockyard" / "v1"
        if OUT_PACKAGE.exists():
            shutil.rmtree(OUT_PACKAGE)
        shutil.copytree(src, OUT_PACKAGE)
    print(f"generated {sorted(p.name for p in OUT_PACKAGE.iterdir())}", file=sys.stderr)


if __name__ == "__main__":
    main()
