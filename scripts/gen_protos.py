"""Regenerates gen/ from protos/: the one way generated code is made (CI fails on any diff).

Generated modules import each other as `ostinato.<svc>.v1`, which would collide with the
hand-written `ostinato` package, so they live under the `gen` package and their imports are
rewritten to `gen.ostinato...`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
IMPORT_RE = re.compile(r"^(from|import) ostinato\.", re.MULTILINE)


def main() -> int:
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    shutil.rmtree(GEN / "ostinato", ignore_errors=True)
    GEN.mkdir(exist_ok=True)
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={GEN}",
        f"--grpc_python_out={GEN}",
        f"--mypy_out={GEN}",
        f"--mypy_grpc_out={GEN}",
        *files,
    ]
    done = subprocess.run(cmd, cwd=PROTOS, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        return done.returncode
    for path in sorted(GEN.rglob("*.py*")):
        if path.suffix in (".py", ".pyi"):
            text = path.read_text()
            new = IMPORT_RE.sub(r"\1 gen.ostinato.", text)
            if new != text:
                path.write_text(new)
    for folder in [GEN, *sorted(p for p in GEN.rglob("*") if p.is_dir())]:
        if folder.name != "__pycache__":
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text("")
    print(f"generated {len(files)} proto files into {GEN.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
