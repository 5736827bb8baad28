"""Regenerate the Python modules of `serving/proto/recsys/v1/*.proto` (`make proto`).

    python -m serving.proto.generate            # writes next to the .proto files
    python -m serving.proto.generate --out DIR  # writes DIR/recsys/v1/*_pb2*.py(i) (the test)

grpcio-tools' protoc writes `from recsys.v1 import common_pb2`, the import path of the
.proto files. In this repository `recsys` is the offline library, so those imports are
rewritten to `serving.proto.recsys.v1`; the .proto files keep the short `recsys/v1/...`
paths that other languages' clients and reflection see.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "recsys" / "v1"
PYTHON_PACKAGE = "serving.proto.recsys.v1"
_IMPORT = re.compile(r"^from recsys\.v1 import ", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted(PACKAGE_DIR.glob("*.proto"))


def generated_names() -> list[str]:
    """Names of the modules `generate` writes, relative to recsys/v1/."""
    names = []
    for proto in proto_files():
        stem = proto.stem
        names += [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]
    return names


def generate(out: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc on every .proto into `out`/recsys/v1/ and fix the imports; return the files."""
    from grpc_tools import protoc

    out = Path(out)
    (out / "recsys" / "v1").mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    sources = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {sources}")
    written = []
    for name in generated_names():
        path = out / "recsys" / "v1" / name
        path.write_text(_IMPORT.sub(f"from {PYTHON_PACKAGE} import ", path.read_text()))
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
