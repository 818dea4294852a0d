"""The embedded SQLite store under real concurrency, and the repair of a store left mid-migration.

Every test here starts real ``gnomon`` processes on one ``GNOMON_HOME``: several runs started
together on a fresh home (first use creates and migrates the store and the experiment) and on a
populated one, then a store whose migration was killed by SIGKILL at the point where alembic had
created its ``_alembic_tmp_*`` copy (the state an older gnomon left behind).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

GNOMON = str(Path(sys.executable).parent / "gnomon")
PROCESSES = 5


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GNOMON_", "MLFLOW_"))}
    env.update({"GNOMON_HOME": str(home), "COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "2"})
    return env


def _run_together(home: Path, data_dir: Path, n: int, *extra: str) -> list[subprocess.CompletedProcess]:
    """Start ``n`` ``gnomon run dataset_summary`` processes at once; wait for all of them."""
    procs = [subprocess.Popen([GNOMON, "run", "dataset_summary", "-P", f"data_dir={data_dir}", "-P", f"seed={i}",
                               "--json", *extra], env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(n)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def _runs(home: Path, experiment: str) -> list[tuple[str, str]]:
    connection = sqlite3.connect(str(home / "mlflow.db"))
    try:
        return connection.execute(
            "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
            "WHERE e.name = ?", (experiment,)).fetchall()
    finally:
        connection.close()


def _assert_all_recorded(results, home: Path, experiment: str, before: int = 0) -> None:
    failures = [f"exit {r.returncode}: {r.stderr[-1500:]}" for r in results if r.returncode != 0]
    assert not failures, "\n---\n".join(failures)
    for r in results:
        assert "Traceback" not in r.stderr and "OperationalError" not in r.stderr, r.stderr[-1500:]
    ids = {json.loads(r.stdout)["run_id"] for r in results}
    assert len(ids) == len(results)
    runs = dict(_runs(home, experiment))
    assert len(runs) == before + len(results)
    assert all(runs[i] == "FINISHED" for i in ids), runs


def test_runs_started_together_on_a_fresh_home_all_recorded(tmp_path, gnomon_image_folder):
    home = tmp_path / "home"
    results = _run_together(home, gnomon_image_folder(), PROCESSES)
    _assert_all_recorded(results, home, "gnomon")


def test_runs_started_together_on_a_populated_home_new_experiment(tmp_path, gnomon_image_folder):
    home, data = tmp_path / "home", gnomon_image_folder()
    first = _run_together(home, data, 1)
    _assert_all_recorded(first, home, "gnomon")
    results = _run_together(home, data, PROCESSES, "--experiment", "sweep")  # creates one experiment together
    _assert_all_recorded(results, home, "sweep")
    assert len(_runs(home, "gnomon")) == 1


KILL_MID_MIGRATION = textwrap.dedent('''
    """Open an MLflow SQLite store as an older gnomon did (no lock) and SIGKILL it mid-migration."""
    import os, signal, sys
    import sqlalchemy
    from sqlalchemy import event

    target = int(sys.argv[2])
    seen = [0]

    @event.listens_for(sqlalchemy.engine.Engine, "after_cursor_execute")
    def _die(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("CREATE TABLE _ALEMBIC_TMP_"):
            seen[0] += 1
            if seen[0] == target:
                os.kill(os.getpid(), signal.SIGKILL)

    import mlflow
    mlflow.MlflowClient(tracking_uri="sqlite:///" + sys.argv[1]).search_experiments()
''')


def _kill_mid_migration(home: Path, nth: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    script = home.parent / "kill_mid_migration.py"
    script.write_text(KILL_MID_MIGRATION)
    proc = subprocess.run([sys.executable, str(script), str(home / "mlflow.db"), str(nth)], env=_env(home),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    connection = sqlite3.connect(str(home / "mlflow.db"))
    tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    connection.close()
    assert any(t.startswith("_alembic_tmp_") for t in tables), tables


def _plain_mlflow_open(home: Path) -> subprocess.CompletedProcess:
    code = f"import mlflow; mlflow.MlflowClient(tracking_uri='sqlite:///{home / 'mlflow.db'}').search_experiments()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_env(home))


def test_store_check_detects_and_repairs_a_store_left_mid_migration(tmp_path, gnomon_image_folder):
    home = tmp_path / "home"
    _kill_mid_migration(home, 3)
    broken = _plain_mlflow_open(home)
    assert broken.returncode != 0  # the state is really broken: MLflow alone cannot open it any more

    check = subprocess.run([GNOMON, "store", "check"], env=_env(home), capture_output=True, text=True, timeout=300)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "mid-migration" in check.stdout and "_alembic_tmp_" in check.stdout
    assert "--repair" in check.stdout

    fixed = subprocess.run([GNOMON, "store", "check", "--repair"], env=_env(home), capture_output=True, text=True,
                           timeout=300)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "repaired" in fixed.stdout
    assert _plain_mlflow_open(home).returncode == 0
    results = _run_together(home, gnomon_image_folder(), 2)
    _assert_all_recorded(results, home, "gnomon")
    again = subprocess.run([GNOMON, "store", "check"], env=_env(home), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "ok" in again.stdout


def test_a_run_repairs_a_store_left_mid_migration_by_itself(tmp_path, gnomon_image_folder):
    home = tmp_path / "home"
    _kill_mid_migration(home, 2)
    results = _run_together(home, gnomon_image_folder(), 2)
    failures = [r.stderr[-1500:] for r in results if r.returncode != 0]
    assert not failures, failures
    assert len(_runs(home, "gnomon")) == 2
    assert any("left mid-migration" in r.stderr for r in results)


def test_repair_keeps_rows_when_a_migration_dies_on_a_populated_store(tmp_path):
    """A store with runs made by an old MLflow, whose upgrade is killed midway, keeps every row after repair."""
    from gnomon.core import embedded_store as store

    home = tmp_path / "home"
    home.mkdir()
    db = home / "mlflow.db"
    uri = f"sqlite:///{db}"
    # an old store (the initial schema) with one experiment and two runs
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    engine = sqlalchemy.create_engine(uri)
    InitialBase.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(
            "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
            "VALUES (1, 'old', '/tmp/a', 'active')"))
        for n in range(2):
            connection.execute(sqlalchemy.text(
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) VALUES "
                f"('run{n}', 'r', 'LOCAL', 's', 'e', 'u', 'FINISHED', 1, 2, 'v', 'active', '/tmp/a', 1)"))
            connection.execute(sqlalchemy.text(
                f"INSERT INTO metrics (key, value, timestamp, run_uuid) VALUES ('acc', 0.{n + 5}, 1, 'run{n}')"))
    engine.dispose()
    _kill_mid_migration(home, 1)  # the upgrade from base dies after adding metrics.step, inside the rebuild
    report = store.check(uri)
    assert report.interrupted and not report.ok
    done = store.repair(uri, report)
    assert done
    assert store.check(uri).ok
    assert _plain_mlflow_open(home).returncode == 0
    connection = sqlite3.connect(str(db))
    assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    assert sorted(r[0] for r in connection.execute("SELECT value FROM metrics")) == [0.5, 0.6]
    connection.close()


def test_store_calls_refused_with_database_is_locked_are_retried():
    """The retry wrapper put on MLflow's store: "locked" is retried, any other error is not."""
    from gnomon.core import embedded_store as store

    class _Store:
        def __init__(self):
            self.calls = 0

        def log_batch(self, n):
            self.calls += 1
            if self.calls <= n:
                raise RuntimeError("(sqlite3.OperationalError) database is locked")
            return "written"

        def get_run(self):
            self.calls += 1
            raise ValueError("no such run")

    s = _Store()
    store.retry_when_locked(s)
    assert s.log_batch(3) == "written" and s.calls == 4
    s.calls = 0
    try:
        s.get_run()
    except ValueError:
        pass
    assert s.calls == 1
    s.calls = 0
    try:
        s.log_batch(100)  # locked for good: gives up after LOCKED_ATTEMPTS and raises the original error
    except RuntimeError as exc:
        assert store.is_locked_error(exc)
    assert s.calls == store.LOCKED_ATTEMPTS
