"""Generate the Python client's protobuf and gRPC modules (and their .pyi stubs) from protos/.

    python scripts/gen_protos.py            # regenerate into clients/python
    python scripts/gen_protos.py --check    # fail if the committed files differ (CI)

The generated package is ``unified_profile.v1`` (the proto package), shipped by the
``unified-profile-client`` distribution; the code imports it under that name, unchanged.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
TARGET = ROOT / "clients" / "python"
GENERATED = Path("unified_profile") / "v1"


INIT = '''"""Generated protobuf and gRPC modules of the unified_profile.v1 API (scripts/gen_protos.py)."""
'''


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) with the mypy-protobuf plugins into ``out``."""
    bin_dir = Path(sys.executable).parent
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    result = subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--python_out={out}", f"--grpc_python_out={out}",
            f"--mypy_out={out}", f"--mypy_grpc_out={out}",
            *sources,
        ],
        check=False,
        cwd=PROTOS,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"protoc failed:\n{result.stderr}")
    (out / GENERATED / "__init__.py").write_text(INIT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed files differ")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh, committed = Path(tmp) / GENERATED, TARGET / GENERATED
        if args.check:
            names = {p.name for p in fresh.iterdir()} | (
                {p.name for p in committed.iterdir()} if committed.exists() else set()
            )
            drift = sorted(
                n for n in names
                if not (fresh / n).exists() or not (committed / n).exists()
                or not filecmp.cmp(fresh / n, committed / n, shallow=False)
            )
            if drift:
                print("generated code is out of date (run `make protos`): " + ", ".join(drift))
                return 1
            print("generated code is up to date")
            return 0
        if committed.exists():
            shutil.rmtree(committed)
        shutil.copytree(fresh, committed)
        print(f"generated {len(list(committed.iterdir()))} files in {committed.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
