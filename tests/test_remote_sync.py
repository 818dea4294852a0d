# ruff: noqa: F811  (pytest fixtures imported from servers.py are redefined as test arguments)
"""Plugin sync to a real S3 store (SeaweedFS) and pull into a plugin cache."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import uuid
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import gnomon.plugins.builtin as builtin
from gnomon.core.plugins import load_plugins
from gnomon.core.remote import IntegrityError, RemoteError
from gnomon.core.remote.bundle import build_bundle, extract_bundle, make_tar_gz, sha256_hex
from gnomon.core.remote.manifest import Manifest
from gnomon.core.remote.pull import active_manifest, load_synced_plugins, pull
from gnomon.core.remote.sync import read_pointer, sync_plugins

sys.path.insert(0, str(Path(__file__).parent))
from servers import s3_env, s3_server, write_demo_plugin  # noqa: E402,F401

pytestmark = pytest.mark.servers
GNOMON = str(Path(sys.executable).parent / "gnomon")

DIR_PLUGIN = '''from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import TaskSchema
from gnomon.core.tasks import Task

VALUE = {value!r}


def fn(ctx, seed):
    ctx.log_metric("value", VALUE)


@hookimpl
def register_tasks(register):
    register(Task(name="{task}", summary="dir plugin task", schema=TaskSchema, fn=fn))
'''


def make_dir_plugin(root: Path, name: str = "dirplug", value: float = 1.0, task: str = "dirplug_task") -> Path:
    pkg = root / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(DIR_PLUGIN.format(value=value, task=task))
    (pkg / "PLUGIN_VERSION").write_text(f"{value}\n")
    return root


def plugin_set(*dirs: Path, builtins: bool = True, entry_points=()):
    return load_plugins(environ={}, builtins=builtins, entry_points=list(entry_points), plugin_path=[str(d) for d in dirs])


@pytest.fixture
def url(s3_env) -> str:
    return f"s3://{s3_env.bucket}/t-{uuid.uuid4().hex[:8]}"


def keys(s3, url: str) -> list[str]:
    prefix = url.split("/", 3)[3]
    out = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix + "/").get("Contents", [])
    return sorted(o["Key"][len(prefix) + 1:] for o in out)


# -- bundles (no server) ---------------------------------------------------------------------------
def test_bundle_is_deterministic_and_skips_caches(tmp_path):
    make_dir_plugin(tmp_path / "plugins")
    info = plugin_set(tmp_path / "plugins", builtins=False).infos["dirplug"]
    first = build_bundle(info)
    pkg = tmp_path / "plugins" / "dirplug"
    (pkg / "__pycache__").mkdir(exist_ok=True)  # importing the plugin may already have made it
    (pkg / "__pycache__" / "x.pyc").write_bytes(b"cache")
    os.utime(pkg / "__init__.py", (1, 1))
    second = build_bundle(info)
    assert first.sha256 == second.sha256 and first.data == second.data
    with tarfile.open(fileobj=io.BytesIO(second.data)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members) == ["dirplug/PLUGIN_VERSION", "dirplug/__init__.py"]
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(315532800, 0, 0, "")}
    assert second.data[4:8] == b"\0\0\0\0"  # gzip header mtime
    (pkg / "__init__.py").write_text((pkg / "__init__.py").read_text() + "\n# changed\n")
    assert build_bundle(info).sha256 != first.sha256


@pytest.mark.parametrize("member,kind", [("../evil.py", "file"), ("/etc/evil", "file"), ("dirplug/link", "symlink"),
                                         ("other/x.py", "file")])
def test_extract_refuses_escaping_or_foreign_paths(tmp_path, member, kind):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(IntegrityError, match="refusing"):
        extract_bundle(raw.getvalue(), tmp_path / "dest", "dirplug")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "evil.py").exists()


# -- sync ------------------------------------------------------------------------------------------
def test_sync_is_incremental_and_manifest_is_consistent(tmp_path, s3_env, url):
    plugins_dir = make_dir_plugin(tmp_path / "plugins")
    first = sync_plugins(plugin_set(plugins_dir), url)
    assert sorted(n for n, _ in first.uploaded) == ["builtin", "dirplug"] and first.skipped == []
    assert first.manifest_written and first.bytes_uploaded == sum(s for _, s in first.uploaded) > 0
    manifest = read_pointer(s3_env.client(), _loc(url))
    assert manifest.id == first.manifest_id
    client = s3_env.client()
    for entry in manifest.plugins:  # every bundle is there, with the recorded size and sha256
        data = client.get_object(Bucket=s3_env.bucket, Key=entry.key)["Body"].read()
        assert (len(data), sha256_hex(data)) == (entry.size, entry.sha256)
        assert entry.key.endswith(f"bundles/{entry.name}/{entry.sha256}.tar.gz")
    assert f"manifests/{first.manifest_id}.json" in keys(s3_env, url)

    again = sync_plugins(plugin_set(plugins_dir), url)
    assert again.uploaded == [] and sorted(again.skipped) == ["builtin", "dirplug"]
    assert again.manifest_id == first.manifest_id and not again.manifest_written

    make_dir_plugin(tmp_path / "plugins", value=2.0)
    changed = sync_plugins(plugin_set(plugins_dir), url)
    assert [n for n, _ in changed.uploaded] == ["dirplug"] and changed.skipped == ["builtin"]
    assert changed.manifest_id != first.manifest_id
    assert read_pointer(s3_env.client(), _loc(url)).by_name()["dirplug"].version == "2.0"


def test_dry_run_writes_nothing_and_delete_removes_unreferenced(tmp_path, s3_env, url):
    plugins_dir = make_dir_plugin(tmp_path / "plugins")
    sync_plugins(plugin_set(plugins_dir), url)
    before = keys(s3_env, url)
    make_dir_plugin(tmp_path / "plugins", value=3.0)
    dry = sync_plugins(plugin_set(plugins_dir), url, dry_run=True)
    assert [n for n, _ in dry.uploaded] == ["dirplug"] and keys(s3_env, url) == before
    real = sync_plugins(plugin_set(plugins_dir), url, delete=True, keep_for=0)
    after = keys(s3_env, url)
    old_bundle = [k for k in before if k.startswith("bundles/dirplug/")][0]
    assert old_bundle not in after and any(k.endswith(old_bundle) for k in real.deleted)
    current = read_pointer(s3_env.client(), _loc(url))
    assert {e.key.split("/", 1)[1] for e in current.plugins} <= set(after)
    assert after.count("manifest.json") == 1 and [k for k in after if k.startswith("manifests/")] == [
        f"manifests/{current.id}.json"]


def test_interrupted_sync_leaves_old_manifest_in_force(tmp_path, s3_env, url):
    plugins_dir = make_dir_plugin(tmp_path / "plugins")
    good = sync_plugins(plugin_set(plugins_dir), url)
    make_dir_plugin(tmp_path / "plugins", value=9.0, task="dirplug_task")
    real = s3_env.client()

    class CrashBeforeManifest:  # a real client that "crashes" right after the bundles are uploaded
        def __getattr__(self, name):
            return getattr(real, name)

        def put_object(self, **kwargs):
            if kwargs["Key"].endswith(".json"):
                raise KeyboardInterrupt("simulated crash")
            return real.put_object(**kwargs)

    with pytest.raises(KeyboardInterrupt):
        sync_plugins(plugin_set(plugins_dir), url, client=CrashBeforeManifest())
    assert len([k for k in keys(s3_env, url) if k.startswith("bundles/dirplug/")]) == 2
    assert read_pointer(real, _loc(url)).id == good.manifest_id  # the new bundle is there, unreferenced
    report = pull(url, tmp_path / "cache")
    assert report.manifest_id == good.manifest_id
    assert (tmp_path / "cache" / "active" / "dirplug" / "PLUGIN_VERSION").read_text().strip() == "1.0"


def test_concurrent_syncs_never_leave_a_mixed_state(tmp_path, s3_env, url):
    a = make_dir_plugin(tmp_path / "a", value=1.0)
    b = make_dir_plugin(make_dir_plugin(tmp_path / "b", value=2.0), name="other", task="other_task")
    sets = {"a": plugin_set(a, builtins=False), "b": plugin_set(b, builtins=False)}
    digests = {}
    errors = []

    def run(label):
        try:
            for _ in range(3):
                sync_plugins(sets[label], url)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    for label, ps in sets.items():
        digests[label] = Manifest("", "", "", [_entry(bd, url) for bd in map(build_bundle, ps.loaded)]).content_digest()
    threads = [threading.Thread(target=run, args=(label,)) for label in sets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    final = read_pointer(s3_env.client(), _loc(url))
    assert final.content_digest() in digests.values()
    report = pull(url, tmp_path / "cache")  # and it pulls and verifies completely
    assert sorted(p.name for p in (tmp_path / "cache" / "active").iterdir() if not p.name.startswith(".")) == sorted(
        e.name for e in final.plugins)
    assert report.manifest_id == final.id


# -- pull ------------------------------------------------------------------------------------------
def test_pull_fetches_only_changes_and_loads_exactly_the_synced_plugins(tmp_path, s3_env, url, monkeypatch):
    src = write_demo_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(src))
    (ep,) = [e for e in entry_points(group="gnomon") if e.name == "remote_demo"]  # found via its .dist-info
    plugins_dir = make_dir_plugin(tmp_path / "plugins")
    sync_plugins(plugin_set(plugins_dir, entry_points=[ep]), url)
    for name in [m for m in sys.modules if m.startswith("gnomon_remote_demo")]:
        del sys.modules[name]
    sys.path.remove(str(src))  # "uninstall" it: the pulled copy must not need the original
    cache = tmp_path / "cache"
    first = pull(url, cache)
    assert sorted(n for n, _ in first.fetched) == ["builtin", "dirplug", "remote_demo"] and first.changed
    loaded = load_synced_plugins(cache / "active")
    sources = {i.name: i.source for i in loaded.infos.values()}
    assert sources.pop("dirplug") == sources.pop("remote_demo") == "directory"
    # the builtin package arrives whole and splits into its plugins again on the worker
    assert set(sources) == {f"builtin.{p}" for p in builtin.GNOMON_PLUGINS} and set(sources.values()) == {"directory"}
    assert not loaded.broken
    assert {"remote_demo", "dirplug_task", "dataset_summary"} <= set(loaded.registry.tasks)
    assert str(cache) in sys.modules["gnomon_remote_demo.plugin"].__file__
    assert loaded.infos["remote_demo"].version == "0.1.0"

    noop = pull(url, cache)
    assert noop.fetched == [] and not noop.changed
    make_dir_plugin(tmp_path / "plugins", value=5.0)
    sys.path.insert(0, str(src))
    try:
        sync_plugins(plugin_set(plugins_dir, entry_points=[ep]), url)
    finally:
        sys.path.remove(str(src))
    second = pull(url, cache)
    before, after = (Manifest.from_json((cache / "sets" / r.manifest_id / ".manifest.json").read_bytes(), "cache")
                     for r in (first, second))
    changed = sorted(n for n, e in after.by_name().items() if before.by_name()[n].sha256 != e.sha256)
    assert "dirplug" in changed and "remote_demo" not in changed  # (builtin only if someone edits it meanwhile)
    assert sorted(n for n, _ in second.fetched) == changed
    assert sorted(second.reused) == sorted(set(after.by_name()) - set(changed))
    assert active_manifest(cache).id == second.manifest_id
    older = pull(url, cache, version=first.manifest_id)  # an older version is still available, from the cache
    assert older.changed and active_manifest(cache).id == first.manifest_id


def test_a_part_disabled_where_the_set_was_synced_stays_off_on_the_worker(tmp_path, s3_env, url):
    syncing = load_plugins(environ={"GNOMON_DISABLE_PLUGINS": "builtin.literature_triggers"}, entry_points=[])
    assert "builtin.literature_triggers" not in syncing.infos
    sync_plugins(syncing, url)
    cache = tmp_path / "cache"
    pull(url, cache)
    assert (cache / "active" / "builtin" / "PLUGIN_PARTS").exists()
    worker = load_synced_plugins(cache / "active")
    assert set(worker.infos) == {f"builtin.{p}" for p in builtin.GNOMON_PLUGINS} - {"builtin.literature_triggers"}
    assert ("builtin.literature_triggers", "directory",
            "not loaded where the bundle was synced (PLUGIN_PARTS)") in worker.skipped
    assert not worker.broken
    # the worker registers what the syncing machine did, no more: the literature triggers are missing
    assert set(worker.registry.attacks) == set(syncing.registry.attacks)
    assert {"blended", "sig", "warp"}.isdisjoint(worker.registry.attacks) and "pattern" in worker.registry.attacks
    # enabling the part again and re-syncing ships a new set with it
    sync_plugins(load_plugins(environ={}, entry_points=[]), url)
    pull(url, cache)
    assert "blended" in load_synced_plugins(cache / "active").registry.attacks


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_damaged_bundle_is_refused_and_last_good_set_stays(tmp_path, s3_env, url, damage):
    plugins_dir = make_dir_plugin(tmp_path / "plugins")
    good = sync_plugins(plugin_set(plugins_dir, builtins=False), url)
    cache = tmp_path / "cache"
    pull(url, cache)
    make_dir_plugin(tmp_path / "plugins", value=7.0)
    sync_plugins(plugin_set(plugins_dir, builtins=False), url)
    entry = read_pointer(s3_env.client(), _loc(url)).by_name()["dirplug"]
    client = s3_env.client()
    data = client.get_object(Bucket=s3_env.bucket, Key=entry.key)["Body"].read()
    if damage == "tampered":
        evil = make_tar_gz({}, {"dirplug/__init__.py": b"import os\nos.system('echo pwned')\n",
                                "dirplug/PLUGIN_VERSION": b"7.0\n"})
        data = evil + b"\0" * max(0, len(data) - len(evil))
        data = data[:entry.size]
    else:
        data = data[: len(data) // 2]
    client.put_object(Bucket=s3_env.bucket, Key=entry.key, Body=data)
    with pytest.raises(IntegrityError, match="dirplug") as info:
        pull(url, cache)
    assert ("truncated" if damage == "truncated" else "failed verification") in str(info.value)
    assert "not changed" in str(info.value)
    assert active_manifest(cache).id == good.manifest_id
    assert (cache / "active" / "dirplug" / "PLUGIN_VERSION").read_text().strip() == "1.0"
    assert not [p for p in (cache / "store").iterdir() if p.name.startswith(".tmp")]


# -- CLI and credentials ---------------------------------------------------------------------------
def _cli(args, env_extra: dict, home: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GNOMON_"))}
    env.update({"COLUMNS": "250", "HOME": str(home), "GNOMON_HOME": str(home / ".gnomon"), "GNOMON_LOAD_PLUGINS": "", **env_extra})
    return subprocess.run([GNOMON, *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_sync_pull_and_credential_errors(tmp_path, s3_server, url):
    good_env = s3_server.env()
    done = _cli(["plugins", "sync", url], good_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "uploaded 1, skipped 0" in done.stdout and "bytes" in done.stdout
    again = _cli(["plugins", "sync", url, "--json"], good_env, tmp_path)
    assert '"skipped": [\n    "builtin"\n  ]' in again.stdout and '"bytes_uploaded": 0' in again.stdout
    pulled = _cli(["plugins", "pull", url, "--cache", str(tmp_path / "c")], good_env, tmp_path)
    assert pulled.returncode == 0 and f"GNOMON_PLUGIN_PATH={tmp_path / 'c' / 'active'}" in pulled.stdout

    wrong = {**good_env, "AWS_SECRET_ACCESS_KEY": "definitely-wrong-secret"}
    for args in (["plugins", "sync", url], ["plugins", "pull", url, "--cache", str(tmp_path / "d")]):
        bad = _cli(args, wrong, tmp_path)
        assert bad.returncode == 1
        lines = [line for line in bad.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "rejected the credentials" in lines[0], bad.stderr
        assert "definitely-wrong-secret" not in bad.stderr + bad.stdout
        assert "Traceback" not in bad.stderr
    none = {k: v for k, v in good_env.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    missing = _cli(["plugins", "sync", url], {**none, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "nope"),
                                              "AWS_CONFIG_FILE": str(tmp_path / "nope")}, tmp_path)
    assert missing.returncode == 1 and "no S3 credentials found" in missing.stderr


def test_bad_urls_and_missing_versions_are_clear(tmp_path, s3_env, url):
    with pytest.raises(RemoteError, match="expected an S3 URL"):
        pull("http://example/x", tmp_path / "c")
    with pytest.raises(RemoteError, match="nothing was synced"):
        pull(url, tmp_path / "c")
    sync_plugins(plugin_set(make_dir_plugin(tmp_path / "p"), builtins=False), url)
    with pytest.raises(RemoteError, match="does not exist"):
        pull(url, tmp_path / "c", version="20000101T000000000000Z-000000000000")
    with pytest.raises(RemoteError, match="is not a manifest version"):
        pull(url, tmp_path / "c", version="../../etc")


def _loc(url: str):
    from gnomon.core.remote.s3 import parse_s3_url

    return parse_s3_url(url)


def _entry(bundle, url):
    from gnomon.core.remote.manifest import Entry

    return Entry(bundle.name, bundle.version, bundle.sha256, bundle.size, bundle.source, bundle.module, bundle.key(_loc(url)))
