"""The committed generated code is what ``make proto`` produces, and the paths are the seed's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from taskdash.periodic.proto import periodic_task_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = Path("taskdash/periodic/proto")
GENERATED = ("periodic_task_pb2.py", "periodic_task_pb2.pyi", "periodic_task_pb2_grpc.py")


def test_generated_code_is_reproducible(tmp_path: Path) -> None:
    (tmp_path / PROTO_DIR).mkdir(parents=True)
    shutil.copy(ROOT / PROTO_DIR / "periodic_task.proto", tmp_path / PROTO_DIR)
    # the command of the Makefile's proto target
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
         "--grpc_python_out=.", str(PROTO_DIR / "periodic_task.proto")],
        cwd=tmp_path, check=True, timeout=60,
    )  # fmt: skip
    for name in GENERATED:
        fresh = (tmp_path / PROTO_DIR / name).read_bytes()
        assert fresh == (ROOT / PROTO_DIR / name).read_bytes(), f"{name}: run `make proto`"
    assert "grpc_tools.protoc" in (ROOT / "Makefile").read_text()


def test_no_package_line_so_paths_are_the_seeds() -> None:
    text = (ROOT / PROTO_DIR / "periodic_task.proto").read_text()
    assert not any(line.startswith("package") for line in text.splitlines())
    service = pb.DESCRIPTOR.services_by_name["PeriodicTask"]
    assert service.full_name == "PeriodicTask"
    assert [m.name for m in service.methods] == [
        "ServiceRegistry",
        "CreatePeriodicTaskQueue",
        "StartPeriodicTaskQueue",
        "CreateTask",
        "GetTaskList",
        "CompleteTask",
    ]
    fields = {f.name: (f.number, f.type) for f in pb.CreateTaskRequest.DESCRIPTOR.fields}
    assert fields["task_data"] == (5, 9)  # the seed's _Json: a string (TYPE_STRING = 9)
    assert pb.CompleteTaskRequest.DESCRIPTOR.fields_by_name["task_id"].type == 4  # uint64
