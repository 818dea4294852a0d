"""What a newcomer sees in a real 80x24 terminal: no library noise by default, everything with --verbose.

The README flow runs in a pseudo-terminal (``pty``, window size 80x24), so gnomon sees a real
terminal (progress bars, colours, the terminal's width) and every byte it writes is checked,
including lines a progress bar later overwrote.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time
import warnings
from pathlib import Path

import pytest

GNOMON = Path(sys.executable).with_name("gnomon")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")

#: What must not reach a terminal at default verbosity.
TF_STARTUP = re.compile(r"absl::InitializeLog|oneDNN custom operations|cudart_stub|cpu_feature_guard|"
                        r"cuda drivers|cuInit|^[IWE]\d{4} \d\d:\d\d:\d\d", re.M)
PY_WARNING = re.compile(r"\b\w*Warning: |warnings\.warn\(")
MLFLOW_CHATTER = re.compile(r"Successfully registered model|Created version '")


def run_in_terminal(args: list[str], env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
    """Run ``gnomon ARGS`` with stdin/stdout/stderr on an 80x24 pty; its exit code and what it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    cmd = [str(GNOMON)] if GNOMON.exists() else [sys.executable, "-m", "gnomon.cli.main"]
    proc = subprocess.Popen(cmd + args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                            start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    code = proc.wait(timeout=60)
    text = ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r\n", "\n")
    return code, text


@pytest.fixture
def terminal_env(gnomon_home):
    """A newcomer's shell: no TF_CPP_MIN_LOG_LEVEL, no COLUMNS, a real TERM."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"TF_CPP_MIN_LOG_LEVEL", "COLUMNS", "LINES", "PYTHONWARNINGS", "GNOMON_DEBUG", "GNOMON_VERBOSE"}}
    env.update(TERM="xterm-256color", GNOMON_HOME=str(gnomon_home))
    return env


def assert_quiet(text: str) -> None:
    assert not TF_STARTUP.search(text), f"TensorFlow start-up lines on the console:\n{text[-3000:]}"
    assert not PY_WARNING.search(text), f"a Python warning on the console:\n{text[-3000:]}"
    assert not MLFLOW_CHATTER.search(text), f"MLflow chatter on the console:\n{text[-3000:]}"


def test_the_readme_flow_in_an_80x24_terminal_is_quiet_and_verbose_brings_the_noise_back(terminal_env):
    flow = [
        ["--help"],
        ["data", "mnist"],
        ["tasks", "list"],
        ["tasks", "show", "train"],
        ["run", "train", "-P", "model_architecture=le_net", "-P", "epochs=0.1", "-P", "batch_size=64",
         "-P", "register_model=true"],
        ["run", "spatial_smoothing", "-P", "model=gnomon_le_net", "-P", "batch_size=100"],  # imports ART
    ]
    seen = []
    for args in flow:
        code, text = run_in_terminal(args, terminal_env)
        assert code == 0, f"gnomon {' '.join(args)} exited {code}:\n{text[-3000:]}"
        assert_quiet(text)
        seen.append(text)
    assert "gen_poison_clean_data" in seen[2] and "FINISHED" in seen[4] and "FINISHED" in seen[5]

    code, text = run_in_terminal(["run", "spatial_smoothing", "-P", "model=gnomon_le_net", "-P", "batch_size=100"],
                                 {**terminal_env, "GNOMON_DEBUG": "1"})
    assert code == 0, text[-3000:]
    assert "absl::InitializeLog" in text or "oneDNN custom operations" in text, text[-3000:]
    assert "PyTorch not found" in text, text[-3000:]


def test_verbose_flag_keeps_tensorflow_start_up_lines(terminal_env):
    code, text = run_in_terminal(["--verbose", "models", "show", "shallow_net"], terminal_env)
    assert code == 0, text[-3000:]
    assert TF_STARTUP.search(text), text[-3000:]
    code, text = run_in_terminal(["models", "show", "shallow_net"], terminal_env)
    assert code == 0 and "dense" in text.lower(), text[-3000:]
    assert_quiet(text)


DEPRECATING_PLUGIN = '''
import warnings

from marshmallow import fields
from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import TaskSchema
from gnomon.core.tasks import Task


class OldSchema(TaskSchema):
    value = fields.Integer(load_default=1)


def old_task(ctx, value, seed):
    warnings.warn("old_task is deprecated; use new_task", DeprecationWarning, stacklevel=1)
    return {"value": value}


@hookimpl
def register_tasks(register):
    register(Task(name="old_task", summary="a task that is going away", schema=OldSchema, fn=old_task))
'''


def test_warnings_that_matter_still_reach_the_terminal(terminal_env, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "oldie.py").write_text(textwrap.dedent(DEPRECATING_PLUGIN))
    (plugins / "broken_one.py").write_text("import this_module_does_not_exist\n")
    env = {**terminal_env, "GNOMON_PLUGIN_PATH": str(plugins)}

    code, text = run_in_terminal(["run", "old_task", "-P", "value=3"], env)
    assert code == 0, text[-3000:]
    assert "DeprecationWarning: old_task is deprecated; use new_task" in text, text
    assert "plugin 'broken_one' is broken" in text, text


def test_gnomon_warnings_print_as_one_line_and_slow_models_are_flagged(capsys):
    from gnomon.core.models import SLOW_ON_CPU_PARAMS, warn_if_slow_on_cpu
    from gnomon.core.quiet import GnomonWarning, silence_libraries

    class Model:
        def __init__(self, n):
            self.n = n

        def count_params(self):
            return self.n

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_slow_on_cpu("small", Model(SLOW_ON_CPU_PARAMS - 1))
        warn_if_slow_on_cpu("huge", Model(4 * SLOW_ON_CPU_PARAMS))
    assert [str(w.message) for w in caught if w.category is GnomonWarning] == [
        f"model 'huge' has {4 * SLOW_ON_CPU_PARAMS / 1e6:.1f} M parameters and no GPU is visible: on this CPU it "
        "trains and predicts slowly; try a fraction of an epoch first (-P epochs=0.05)"]

    with warnings.catch_warnings():
        silence_libraries()
        warnings.warn(GnomonWarning("mind the gap"), stacklevel=1)
    assert capsys.readouterr().err == "warning: mind the gap\n"


def test_captured_fd2_drops_only_the_noise(capfd):
    from gnomon.core.quiet import captured_fd2

    with captured_fd2():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796219002.852859   12745 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1796219002.852859   12745 real.cc:1] a real error\n")
        os.write(2, b"something else\n")
    err = capfd.readouterr().err
    assert err == "E0000 00:00:1796219002.852859   12745 real.cc:1] a real error\nsomething else\n"


def test_piped_output_is_plain_text(gnomon_home):
    """click probes stdout with write(b"") to tell text from binary streams; gnomon's stream wrappers must refuse."""
    cmd = [str(GNOMON)] if GNOMON.exists() else [sys.executable, "-m", "gnomon.cli.main"]
    proc = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("gnomon ") and "b'" not in proc.stdout, proc.stdout
