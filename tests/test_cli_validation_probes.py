"""Issue 15 probes through the real CLI: bad values exit 2 at validation with nothing created.

Each used to pass validation and fail inside an MLflow run (after preparing 70,000 PNGs for the
first one). Now the process exits 2 before opening the store: GNOMON_HOME stays empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _gnomon() -> list[str]:
    exe = Path(sys.executable).with_name("gnomon")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gnomon.cli.main"]


@pytest.mark.parametrize("argv, expected", [
    (["train", "-P", "batch_size=99999999999999999999999", "-P", "epochs=1"],
     "batch_size: Must be greater than or equal to 1 and less than or equal to 2147483647"),
    (["infer", "-P", "model="], "model: must not be empty"),
    (["gen_poison_test_data", "-P", "output_tar_name=../evil.tar"],
     "output_tar_name: must be a plain file or folder name"),
    (["train", "-P", "epochs"], "malformed -P option:\n  -P epochs: expected name=value"),
])
def test_bad_value_exits_2_before_anything_is_created(tmp_path, argv, expected):
    home = tmp_path / "home"
    env = {**os.environ, "GNOMON_HOME": str(home)}
    proc = subprocess.run(_gnomon() + ["run", *argv], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr
    assert "task '-P'" not in proc.stderr and "Traceback" not in proc.stderr
    # no MLflow store or run, no prepared MNIST, no artifact written anywhere
    assert not home.exists() or not any(home.rglob("*")), sorted(home.rglob("*"))[:10]
    assert not (tmp_path / "evil.tar").exists()
