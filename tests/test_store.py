"""The engine's store owns every in-process cache: check->run handoff, one budget, nothing module-level."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from gnomon.core.datasets import ImageDataset
from gnomon.core.store import Store

REPO = Path(__file__).resolve().parents[1]
#: module-level state that is not a cache of gnomon data, with the reason
ALLOWED_GLOBALS = {
    ("core/remote/s3.py", "_LOADER"): "botocore's parsed service models, shared by the S3 clients of a process",
    ("core/embedded_store.py", "_prepared"): "SQLite stores created/migrated by this process: mirrors MLflow's "
                                              "process-wide store cache, which holds the prepared stores",
    ("core/tracking.py", "_reaped"): "stores this process already swept for orphaned runs (once per process)",
}


def _dataset(n=10, side=4):
    return ImageDataset(np.zeros((n, side, side, 1), np.float32), np.zeros(n, np.int64), ["0", "1"], {})


def test_a_check_hands_its_dataset_to_the_run_and_validation_alone_keeps_nothing():
    store = Store()
    data = _dataset()
    store.keep_for_run("k", data)
    assert store.peek_for_run("k") is data
    assert store.take_for_run("k") is data and store.take_for_run("k") is None
    store.keep_for_run("a", _dataset())
    store.keep_for_run("b", _dataset())
    store.release_checks()
    assert len(store.datasets.entries) == 0


def test_handoffs_share_the_dataset_budget(monkeypatch):
    monkeypatch.setenv("GNOMON_DATASET_MEMO_MB", str(3 * 64 * 4 / 2**20))  # room for 3 of these datasets
    store = Store()
    for key in "abcde":
        store.keep_for_run(key, _dataset(n=4, side=4))  # 4*4*4*4 bytes = 256 B; budget 768 B
    kept = [k for k in "abcde" if store.peek_for_run(k) is not None]
    assert kept == ["c", "d", "e"]
    monkeypatch.setenv("GNOMON_DATASET_MEMO_MB", "0")
    store.keep_for_run("z", _dataset())
    assert store.take_for_run("z") is None  # off: the run loads it again


def test_engines_do_not_share_a_store(gnomon_engine_factory):
    a, b = gnomon_engine_factory(), gnomon_engine_factory()
    a.store.keep_for_run("k", _dataset())
    assert b.store.peek_for_run("k") is None and a.store is not b.store


def test_the_poisoning_task_loads_its_dataset_once_and_validate_frees_it(gnomon_engine_factory, monkeypatch):
    import gnomon.core.datasets as datasets

    engine = gnomon_engine_factory()
    calls = []
    real = datasets.resolve_dataset
    monkeypatch.setattr(datasets, "resolve_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    params = {"target_class": 1, "poison_fraction": 0.1}
    engine.validate("gen_poison_test_data", params)
    assert calls == [1] and len(engine.store.datasets.entries) == 0  # validation only: freed
    engine.run("gen_poison_test_data", params)
    assert calls == [1, 1]  # the check loaded it, the run took it over
    assert not [k for k in engine.store.datasets.entries if k[0] == "check"]


def _module_state(path: Path) -> list[str]:
    """Names a module rebinds from functions (``global``) or binds at module level to an empty container."""
    tree = ast.parse(path.read_text())
    found = {name for node in ast.walk(tree) if isinstance(node, ast.Global) for name in node.names}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            value = node.value
            literal = isinstance(value, (ast.Dict, ast.List, ast.Set))
            empty = (literal and not (value.keys if isinstance(value, ast.Dict) else value.elts)) \
                or (isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) in
                    {"dict", "list", "set", "OrderedDict", "WeakKeyDictionary", "WeakValueDictionary", "LRU",
                     "DatasetMemo", "defaultdict", "Counter"})
            if empty:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found |= {t.id for t in targets if isinstance(t, ast.Name)}
    return sorted(found)


def test_no_module_level_mutable_cache():
    offenders = []
    # (cli/state.py's per-process engine is the CLI's one command, not a data cache)
    for folder in ("core", "plugins/builtin", "plugins/contrib"):
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            offenders += [f"{rel}: {name}" for name in _module_state(path) if (rel, name) not in ALLOWED_GLOBALS]
    assert not offenders, f"module-level mutable state (put it in the engine's store): {offenders}"


def test_the_scan_finds_a_module_cache(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("_CACHE = {}\n_X = OrderedDict()\n\ndef f():\n    global _Y\n    _Y = 1\n")
    assert _module_state(path) == ["_CACHE", "_X", "_Y"]
