"""Offline, a workflow says once that MNIST cannot be had, names the steps, and tries the mirrors once."""

from __future__ import annotations

import http.server
import threading

import pytest
from typer.testing import CliRunner

from gnomon.cli import state
from gnomon.cli.main import build_app
from gnomon.core.datasets.errors import MnistSourceError
from gnomon.core.datasets.mnist import prepare_mnist


@pytest.fixture
def empty_mirror():
    """A real HTTP mirror that has no MNIST (404 for everything); counts the requests it gets."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", hits
    server.shutdown()
    server.server_close()


def test_offline_workflow_says_it_once_and_names_the_steps(gnomon_home, monkeypatch, empty_mirror, tmp_path):
    url, hits = empty_mirror
    monkeypatch.delenv("GNOMON_MNIST_SOURCE")
    monkeypatch.setenv("GNOMON_MNIST_MIRRORS", f"{url}a/,{url}b/")
    with pytest.raises(MnistSourceError):
        prepare_mnist(tmp_path / "one-try")
    one_try = len(hits)
    assert one_try > 0
    hits.clear()

    state.reset()
    result = CliRunner().invoke(build_app(), ["workflow", "validate", "baseline"], catch_exceptions=False)
    state.reset()
    assert result.exit_code == 2, result.output
    text = result.output
    assert text.count("no mirror could be reached") == 1, text
    affected = [line for line in text.splitlines() if line.strip().startswith("steps affected:")]
    assert len(affected) == 1 and affected[0].count("param 'data_dir'") >= 2, text
    assert len(hits) == one_try, "the mirrors were tried again for another step"
