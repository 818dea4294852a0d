"""The embedded SQLite store under concurrency: one lock, busy timeouts, retries, repair.

Many gnomon processes may open the same embedded store at once (parallel ``gnomon run``,
sweeps, workflow steps, workers on one machine). MLflow creates and migrates an SQLite store
the first time a process opens it, without coordination between processes, and two processes
migrating together corrupt it. So gnomon:

* takes an inter-process lock (:mod:`filelock`, ``<db>.lock`` next to the database) while it
  creates or migrates the store and creates the experiment; the lock is released by the
  kernel if the holder dies;
* switches the database to WAL mode (readers never wait for a writer) and gives every SQLite
  connection a busy timeout (``PRAGMA busy_timeout``), so writers queue instead of failing;
* retries a store call that SQLite still refuses with "database is locked" (a read transaction
  that must upgrade to a write after another process wrote gets that error at once);
* repairs a store left mid-migration (a process killed while migrating, or an older gnomon
  that migrated without the lock): it restores the schema of the revision the store records,
  keeping the data, and lets MLflow migrate again (:func:`repair`).
"""

from __future__ import annotations

import functools
import logging
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("gnomon.store")

#: How long a process waits for another one creating or migrating the store (seconds).
LOCK_TIMEOUT_S = 300.0
#: SQLite busy timeout given to every connection (milliseconds).
BUSY_TIMEOUT_MS = 60_000
#: Attempts of a store call that SQLite refuses with "database is locked".
LOCKED_ATTEMPTS = 8

_prepared: set[str] = set()  # URIs prepared in this process; MLflow caches its stores per process too


def sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def store_lock(db: Path):
    """The inter-process lock guarding creation and migration of the SQLite database ``db``."""
    from filelock import FileLock

    return FileLock(str(db) + ".lock", timeout=LOCK_TIMEOUT_S)


def is_locked_error(exc: BaseException) -> bool:
    """True if ``exc`` (or its cause) is SQLite's "database is locked" / "database is busy"."""
    seen = 0
    while exc is not None and seen < 10:
        text = str(exc).lower()
        if "database is locked" in text or "database is busy" in text or "database table is locked" in text:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _install_busy_timeout() -> None:
    """Give every SQLite connection SQLAlchemy opens in this process a busy timeout (once)."""
    import sqlalchemy
    from sqlalchemy import event

    if getattr(_install_busy_timeout, "done", False):
        return

    @event.listens_for(sqlalchemy.engine.Engine, "connect")
    def _busy_timeout(dbapi_connection, connection_record):  # pragma: no cover - trivial
        if type(dbapi_connection).__module__.startswith("sqlite3"):
            dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    _install_busy_timeout.done = True


def _retrying(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        for attempt in range(1, LOCKED_ATTEMPTS + 1):
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if attempt == LOCKED_ATTEMPTS or not is_locked_error(exc):
                    raise
                time.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    call.__gnomon_retrying__ = True
    return call


def retry_when_locked(store) -> None:
    """Make every public method of an MLflow SQLAlchemy ``store`` retry on "database is locked".

    Each store method runs in one transaction that SQLite rolled back when it refused it, so
    calling it again is safe.
    """
    for name in dir(type(store)):
        if name.startswith("_"):
            continue
        method = getattr(store, name, None)
        if callable(method) and not getattr(method, "__gnomon_retrying__", False) and not isinstance(method, type):
            try:
                setattr(store, name, _retrying(method))
            except (AttributeError, TypeError):  # properties and slots
                pass


def prepare(uri: str) -> None:
    """Create or migrate the SQLite store at ``uri`` under the lock, repairing an interrupted migration.

    No-op for other stores and for a URI already prepared in this process. Afterwards MLflow's
    cached tracking and registry stores for ``uri`` exist and retry on "database is locked".
    """
    db = sqlite_path(uri)
    if db is None or uri in _prepared:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    _install_busy_timeout()
    from mlflow.tracking._model_registry.utils import _get_store as registry_store
    from mlflow.tracking._tracking_service.utils import _get_store as tracking_store

    with store_lock(db):
        if db.exists() and db.stat().st_size > 0:
            report = check(uri)
            if report.interrupted:
                log.warning("gnomon: repairing the tracking store %s, left mid-migration (%s)",
                            db, "; ".join(report.problems))
                repair(uri, report)
        _wal(db)
        from .errors import GnomonError

        try:
            stores = [tracking_store(uri), registry_store(uri)]
        except Exception as exc:
            raise GnomonError(f"cannot open the tracking store {db}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''} "
                              f"(see 'gnomon store check')") from exc
    for store in stores:
        retry_when_locked(store)
    _prepared.add(uri)


def _wal(db: Path) -> None:
    import sqlite3

    connection = sqlite3.connect(str(db), timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


# -- checking and repairing ------------------------------------------------------------------------
@dataclass
class StoreReport:
    """What :func:`check` found in an SQLite store."""

    path: str
    exists: bool = False
    revision: str | None = None
    head: str | None = None
    integrity: str = "ok"
    leftover_tables: list[str] = field(default_factory=list)
    schema_drift: list[str] = field(default_factory=list)  # differences from the recorded revision
    problems: list[str] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        """The store was left mid-migration (repairable by :func:`repair`)."""
        return bool(self.leftover_tables or self.schema_drift)

    @property
    def ok(self) -> bool:
        return not self.problems


def _alembic_script():
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    return ScriptDirectory.from_config(_get_alembic_config(db_url=""))


def _schema(connection) -> dict[str, dict]:
    """``{table: {"sql": create statement, "columns": [names], "indexes": [create statements]}}``."""
    tables = {}
    for name, sql in connection.execute("SELECT name, sql FROM sqlite_master WHERE type='table' "
                                        "AND name NOT LIKE 'sqlite_%'").fetchall():
        columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{name}")').fetchall()]
        indexes = [row[0] for row in connection.execute(
            "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name=? AND sql IS NOT NULL", (name,)).fetchall()]
        tables[name] = {"sql": sql, "columns": columns, "indexes": indexes}
    return tables


def _reference_schema(revision: str | None) -> dict[str, dict]:
    """The schema MLflow's migrations produce at ``revision`` (None: before the first migration)."""
    import sqlite3

    import sqlalchemy
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    with tempfile.TemporaryDirectory(prefix="gnomon-schema-") as tmp:
        url = f"sqlite:///{tmp}/reference.db"
        engine = sqlalchemy.create_engine(url)
        try:
            InitialBase.metadata.create_all(engine)
            if revision:
                from alembic import command
                from mlflow.store.db.utils import _get_alembic_config

                config = _get_alembic_config(url)
                with engine.begin() as connection:
                    config.attributes["connection"] = connection
                    command.upgrade(config, revision)
        finally:
            engine.dispose()
        connection = sqlite3.connect(f"{tmp}/reference.db")
        try:
            return _schema(connection)
        finally:
            connection.close()


def check(uri: str) -> StoreReport:
    """Inspect the SQLite store at ``uri``: integrity, schema revision, an interrupted migration."""
    import sqlite3

    db = sqlite_path(uri)
    report = StoreReport(path=str(db) if db else uri)
    if db is None or not db.exists():
        return report
    report.exists = True
    script = _alembic_script()
    report.head = script.get_current_head()
    connection = sqlite3.connect(str(db), timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        report.integrity = connection.execute("PRAGMA quick_check").fetchone()[0]
        if report.integrity != "ok":
            report.problems.append(f"SQLite integrity check: {report.integrity}")
        actual = _schema(connection)
        if not actual:
            return report  # an empty file: MLflow creates the tables
        if "alembic_version" in actual:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            report.revision = row[0] if row else None
    finally:
        connection.close()
    report.leftover_tables = sorted(t for t in actual if t.startswith("_alembic_tmp_"))
    if report.revision == report.head and not report.leftover_tables:
        return report
    if report.revision is not None:
        try:
            script.get_revision(report.revision)
        except Exception:
            report.problems.append(f"schema revision {report.revision} is unknown to this MLflow "
                                   f"(made by a newer MLflow?); expected {report.head}")
            return report
    reference = _reference_schema(report.revision)
    for table, spec in reference.items():
        if table == "alembic_version":
            continue
        have = actual.get(table)
        if have is None:
            report.schema_drift.append(f"table {table} missing")
        elif have["columns"] != spec["columns"]:
            report.schema_drift.append(f"table {table} has columns {have['columns']}, "
                                       f"revision {report.revision or 'base'} has {spec['columns']}")
    extra = [t for t in actual if t not in reference and t != "alembic_version" and not t.startswith("_alembic_tmp_")]
    report.schema_drift.extend(f"table {t} not in revision {report.revision or 'base'}" for t in sorted(extra))
    if report.leftover_tables:
        report.problems.append(f"left mid-migration: leftover {', '.join(report.leftover_tables)}")
    if report.schema_drift:
        report.problems.append("left mid-migration: " + "; ".join(report.schema_drift))
    return report


def repair(uri: str, report: StoreReport | None = None) -> list[str]:
    """Restore the schema of the revision the store records (keeping its rows); returns what was done.

    Call with the store lock held (or from :func:`prepare`, which holds it). MLflow then runs the
    interrupted migration again. A leftover ``_alembic_tmp_X`` is dropped when ``X`` still exists
    (the copy had not replaced it), else renamed to ``X``; a table whose columns differ from the
    recorded revision is rebuilt with that revision's definition and its common columns copied.
    """
    import sqlite3

    report = report or check(uri)
    db = sqlite_path(uri)
    if db is None or not report.interrupted:
        return []
    reference = _reference_schema(report.revision)
    done: list[str] = []
    connection = sqlite3.connect(str(db), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        connection.execute("PRAGMA foreign_keys=OFF")
        connection.execute("BEGIN IMMEDIATE")
        actual = _schema(connection)
        for tmp in report.leftover_tables:
            target = tmp[len("_alembic_tmp_"):]
            if target in actual:
                connection.execute(f'DROP TABLE "{tmp}"')
                done.append(f"dropped {tmp}")
            else:
                connection.execute(f'ALTER TABLE "{tmp}" RENAME TO "{target}"')
                done.append(f"renamed {tmp} to {target}")
        actual = _schema(connection)
        for table in [t for t in actual if t not in reference and t != "alembic_version"]:
            connection.execute(f'DROP TABLE "{table}"')
            done.append(f"dropped {table} (created by the interrupted migration)")
        for table, spec in reference.items():
            if table == "alembic_version":
                continue
            have = actual.get(table)
            if have is not None and have["columns"] == spec["columns"]:
                continue
            if have is not None:
                connection.execute(f'ALTER TABLE "{table}" RENAME TO "_gnomon_old_{table}"')
                for index in connection.execute("SELECT name FROM sqlite_master WHERE type='index' AND "
                                                "tbl_name=? AND sql IS NOT NULL", (f"_gnomon_old_{table}",)):
                    connection.execute(f'DROP INDEX "{index[0]}"')
            connection.execute(spec["sql"])
            for index in spec["indexes"]:
                connection.execute(index)
            if have is not None:
                common = [c for c in spec["columns"] if c in have["columns"]]
                cols = ", ".join(f'"{c}"' for c in common)
                connection.execute(f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM "_gnomon_old_{table}"')
                connection.execute(f'DROP TABLE "_gnomon_old_{table}"')
                done.append(f"rebuilt {table} as at revision {report.revision or 'base'}")
            else:
                done.append(f"recreated missing table {table}")
        connection.execute("COMMIT")
    except Exception:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    finally:
        connection.close()
    return done

