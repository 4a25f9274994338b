"""The checked-in protobuf modules are exactly what tools/genproto produces."""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "butterfly" / "api" / "proto"
CHECKED_IN = sorted(
    path.name for path in PROTO_DIR.iterdir() if path.name.endswith(("_pb2.py", "_pb2.pyi"))
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("genproto")
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    result = subprocess.run(
        [str(ROOT / "tools" / "genproto"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    yield out / "butterfly" / "api" / "proto"
    shutil.rmtree(out, ignore_errors=True)


def test_every_proto_has_its_modules() -> None:
    protos = sorted(path.stem for path in PROTO_DIR.glob("*.proto"))
    assert protos == ["encrypted", "message", "message0"]
    assert sorted(f"{name}_pb2{ext}" for name in protos for ext in (".py", ".pyi")) == CHECKED_IN


def test_generator_makes_the_same_files(generated: Path) -> None:
    assert sorted(path.name for path in generated.iterdir() if path.is_file()) == CHECKED_IN


@pytest.mark.parametrize("name", CHECKED_IN)
def test_checked_in_file_is_byte_identical(generated: Path, name: str) -> None:
    assert (generated / name).read_bytes() == (PROTO_DIR / name).read_bytes(), (
        f"butterfly/api/proto/{name} is stale: run tools/genproto"
    )
