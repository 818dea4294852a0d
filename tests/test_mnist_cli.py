"""``gnomon data mnist`` end to end: typer's runner and one real subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gnomon.cli import state
from gnomon.cli.main import build_app

from .conftest import REPO, SAMPLE_IDX


@pytest.fixture
def cli(gnomon_home, monkeypatch):
    runner = CliRunner()

    def invoke(*args):
        state.reset()
        return runner.invoke(build_app(), list(args), catch_exceptions=False)

    yield invoke
    state.reset()


def _pngs(folder: Path) -> int:
    return len(list(folder.rglob("*.png")))


def test_data_mnist_with_source_then_no_op(cli, tmp_path, mnist_sample_arrays):
    dest = tmp_path / "mnist"
    result = cli("data", "mnist", "--source", "tests/data/mnist_sample" if Path.cwd() == REPO else str(SAMPLE_IDX),
                 "--dest", str(dest))
    assert result.exit_code == 0, result.output
    assert "MNIST ready in" in result.output and "training: 1000, testing: 300" in result.output
    assert _pngs(dest / "training") == 1000 and _pngs(dest / "testing") == 300
    x, y = mnist_sample_arrays["training"]
    with Image.open(dest / "training" / str(int(y[7])) / "7.png") as im:
        np.testing.assert_array_equal(np.asarray(im), x[7])
    again = cli("data", "mnist", "--source", str(SAMPLE_IDX), "--dest", str(dest))
    assert again.exit_code == 0 and "already prepared" in again.output


def test_data_mnist_default_dest_from_env_source(cli, gnomon_home):
    result = cli("data", "mnist")  # GNOMON_MNIST_SOURCE points at the sample (conftest)
    assert result.exit_code == 0, result.output
    assert _pngs(gnomon_home / "data" / "mnist" / "testing") == 300


def test_data_mnist_offline_fails_in_one_message(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("GNOMON_MNIST_SOURCE")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GNOMON_MNIST_MIRRORS", f"http://127.0.0.1:{port}/")
    result = cli("data", "mnist", "--dest", str(tmp_path / "m"))
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert text.startswith("error: MNIST is not prepared") and "GNOMON_MNIST_SOURCE" in text and "--source" in text
    assert "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_data_info_and_cache(cli, mnist_sample_dirs, gnomon_home):
    info = cli("data", "info", str(mnist_sample_dirs["testing"]))
    assert info.exit_code == 0 and "300 images, 10 classes" in info.output
    from gnomon.core.datasets import load_image_folder

    load_image_folder(mnist_sample_dirs["testing"], progress=False)
    shown = cli("data", "cache")
    assert shown.exit_code == 0 and "1 cached array(s)" in shown.output
    cleared = cli("data", "cache", "--clear")
    assert "removed 1 cached array(s)" in cleared.output
    missing = cli("data", "info", str(gnomon_home / "nope"))
    assert missing.exit_code == 1 and "does not exist" in " ".join(missing.output.split())


def test_real_subprocess(tmp_path, gnomon_home):
    env = dict(os.environ, GNOMON_HOME=str(gnomon_home))
    env.pop("GNOMON_MNIST_SOURCE", None)
    gnomon = Path(sys.executable).with_name("gnomon")
    cmd = [str(gnomon)] if gnomon.exists() else [sys.executable, "-m", "gnomon.cli.main"]
    done = subprocess.run([*cmd, "data", "mnist", "--source", "tests/data/mnist_sample"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "MNIST ready in" in done.stdout
    assert _pngs(gnomon_home / "data" / "mnist") == 1300
    again = subprocess.run([*cmd, "data", "mnist", "--source", "tests/data/mnist_sample"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already prepared" in again.stdout
