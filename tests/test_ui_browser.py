"""`gnomon ui` in a real browser: headless Chromium opens the printed URL on the experiment's runs.

MLflow 3's UI opens an experiment in its GenAI view (overview, traces, "Detect issues") unless
told otherwise; gnomon tags its experiments as model-training ones and prints a runs-page URL
that puts the UI in its model-training mode. The screenshot is kept (path printed) to look at.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.servers import ctrl_c_enabled, free_ports

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GNOMON = Path(sys.executable).with_name("gnomon")
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


class Chromium:
    """Headless Chromium driven over the DevTools protocol (fresh profile: no remembered UI mode)."""

    def __init__(self, profile: Path):
        import websocket

        port = free_ports(1)[0]
        self.proc = subprocess.Popen([CHROMIUM, *HEADLESS, f"--user-data-dir={profile}",
                                      f"--remote-debugging-port={port}", "--remote-allow-origins=*", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, page = time.monotonic() + 120, None
        while page is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as response:
                    page = next((t for t in json.load(response) if t.get("type") == "page"), None)
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.3)
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                assert "error" not in message, message
                return message.get("result", {})

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                           returnByValue=True)
        return result.get("result", {}).get("value") or ""

    def open_until(self, url: str, wanted: str, timeout: float = 180) -> str:
        """Navigate to ``url``; the page's text once it contains ``wanted`` (or at the timeout)."""
        self.call("Page.navigate", url=url)
        deadline, text = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            text = self.text()
            if wanted in text:
                time.sleep(1.0)  # let the table finish drawing before a screenshot
                return self.text()
            time.sleep(0.5)
        return text

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def ui_server(gnomon_home, mnist_sample_dirs):
    """A real `gnomon ui` on a free port over an embedded store holding one real gnomon run."""
    from gnomon.core.engine import Engine

    result = Engine(show_progress=False).run("dataset_summary", {"data_dir": str(mnist_sample_dirs["testing"])})
    port = free_ports(1)[0]
    cmd = [str(GNOMON)] if GNOMON.exists() else [sys.executable, "-m", "gnomon.cli.main"]
    out, err = gnomon_home / "ui.out", gnomon_home / "ui.err"  # files, not pipes: nothing can fill up
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(cmd + ["ui", "--port", str(port)], stdout=stdout, stderr=stderr,
                                env={**os.environ, "GNOMON_HOME": str(gnomon_home)}, preexec_fn=ctrl_c_enabled)
    url, deadline = None, time.monotonic() + 600
    while time.monotonic() < deadline and url is None and proc.poll() is None:
        for line in out.read_text().splitlines():
            if " runs: " in line:
                url = line.split(" runs: ", 1)[1].strip()
        time.sleep(0.5)
    try:
        assert url, f"gnomon ui printed no runs URL:\n{err.read_text()[-3000:]}"
        yield url, result
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: gnomon ui stops the MLflow server it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_printed_url_opens_the_experiment_on_its_runs(ui_server, tmp_path, gnomon_home):
    url, result = ui_server
    assert url.endswith(f"/#/experiments/{result.experiment_id}/runs?workflowType=machine_learning")

    import mlflow

    experiment = mlflow.MlflowClient().get_experiment(result.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    browser = Chromium(tmp_path / "profile")
    try:
        text = browser.open_until(url, "dataset_summary")  # the run's name is its task's name
        shot = tmp_path / "gnomon-ui-runs.png"
        browser.screenshot(shot)
    finally:
        browser.close()
    print(f"\nscreenshot of the runs page: {shot}")
    assert shot.stat().st_size > 10_000
    assert "dataset_summary" in text, f"the run is not listed:\n{text[:2000]}"
    assert "matching run" in text, f"no runs table:\n{text[:2000]}"
    assert "Model training" in text and "Detect Issues" not in text and "Observability" not in text, \
        f"the GenAI view opened:\n{text[:2000]}"
