# ruff: noqa: F811  (pytest fixtures imported from servers.py are redefined as test arguments)
"""Issue 15: a manifest cannot steer a pull outside its cache, and many pulls can share one cache.

Against a real SeaweedFS S3: hostile manifests (a 64-character relative "sha256", ids and names
with '../' or '/', uppercase digests) are refused with a clear error and nothing left behind; a
planted store folder is not trusted; the temporary folder of a SIGKILLed pull is removed by the
next pull; and a dozen concurrent pull processes, while new versions are synced and prune runs
with keep=1, never see a broken link or a missing plugin.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gnomon.core.remote import IntegrityError
from gnomon.core.remote.manifest import Manifest
from gnomon.core.remote.pull import active_manifest, pull
from gnomon.core.remote.sync import read_pointer, sync_plugins

sys.path.insert(0, str(Path(__file__).parent))
from servers import s3_env, s3_server  # noqa: E402,F401
from test_remote_sync import _loc, make_dir_plugin, plugin_set  # noqa: E402

GOOD_SHA = "a" * 64


def _manifest_bytes(**changes) -> bytes:
    entry = {"name": "dirplug", "version": "1.0", "sha256": GOOD_SHA, "size": 10, "source": "directory",
             "module": "", "key": "p/bundles/dirplug/x.tar.gz"}
    entry.update(changes.pop("entry", {}))
    raw = {"format": 1, "id": "20260101T000000000000Z-abcdef012345", "created": "now", "gnomon_version": "0",
           "plugins": [entry]}
    raw.update(changes)
    return json.dumps(raw).encode()


@pytest.mark.parametrize("changes, message", [
    ({"entry": {"sha256": "A" * 64}}, "malformed sha256"),
    ({"entry": {"sha256": "../../" + "e" * 58}}, "malformed sha256"),
    ({"entry": {"sha256": "g" * 64}}, "malformed sha256"),
    ({"entry": {"sha256": None}}, "malformed sha256"),
    ({"entry": {"name": "a/b"}}, "plugin name 'a/b' is not a safe name"),
    ({"entry": {"name": "../x"}}, "plugin name '../x' is not a safe name"),
    ({"entry": {"name": ".hidden"}}, "is not a safe name"),
    ({"entry": {"size": -1}}, "malformed size"),
    ({"entry": {"size": True}}, "malformed size"),
    ({"id": "../../outside"}, "id '../../outside' is not a safe manifest id"),
    ({"id": "a/b"}, "is not a safe manifest id"),
    ({"plugins": "nope"}, "'plugins' must be a list"),
])
def test_manifest_is_validated_strictly(changes, message):
    with pytest.raises(IntegrityError, match="manifest s3://b/k is malformed") as info:
        Manifest.from_json(_manifest_bytes(**changes), "s3://b/k")
    assert message in str(info.value)


def test_a_valid_manifest_still_parses():
    assert Manifest.from_json(_manifest_bytes(), "x").plugins[0].sha256 == GOOD_SHA


# -- against S3 ------------------------------------------------------------------------------------


@pytest.fixture
def url(s3_env) -> str:
    return f"s3://{s3_env.bucket}/t-{uuid.uuid4().hex[:8]}"


def _put_pointer(s3, url: str, data: bytes) -> None:
    loc = _loc(url)
    s3.client().put_object(Bucket=loc.bucket, Key=loc.key("manifest.json"), Body=data)


def _no_tmp(cache: Path) -> list[Path]:
    return [p for p in cache.rglob(".tmp*")]


@pytest.mark.servers
def test_a_64_character_relative_path_cannot_steer_the_active_set_outside(tmp_path, s3_env, url):
    plugins_dir = make_dir_plugin(tmp_path / "plugins")
    good = sync_plugins(plugin_set(plugins_dir, builtins=False), url)
    cache = tmp_path / "cache"
    pull(url, cache)
    # the attacker's folder, reachable from cache/store as a 64-character relative path
    evil_name = "e" * 58
    evil = make_dir_plugin(tmp_path / evil_name, value=666.0)
    rel = "../../" + evil_name
    assert len(rel) == 64 and (cache / "store" / rel).is_dir()
    hostile = json.loads(read_pointer(s3_env.client(), _loc(url)).to_json())
    hostile["id"] = "20990101T000000000000Z-000000000000"
    hostile["plugins"][0]["sha256"] = rel
    _put_pointer(s3_env, url, json.dumps(hostile).encode())
    with pytest.raises(IntegrityError, match=r"malformed sha256 '\.\./\.\./eee"):
        pull(url, cache)
    assert active_manifest(cache).id == good.manifest_id
    assert "666" not in (cache / "active" / "dirplug" / "PLUGIN_VERSION").read_text()
    assert not any(evil_name in os.path.realpath(p) for p in (cache / "sets").rglob("*"))
    assert evil.exists() and not _no_tmp(cache)


@pytest.mark.servers
@pytest.mark.parametrize("field, value, message", [
    ("id", "../escape", "is not a safe manifest id"),
    ("name", "a/b", "plugin name 'a/b' is not a safe name"),
    ("name", "../up", "plugin name '../up' is not a safe name"),
])
def test_hostile_ids_and_names_give_a_clear_error_and_no_tmp_folder(tmp_path, s3_env, url, field, value, message):
    plugins_dir = make_dir_plugin(tmp_path / "plugins")
    sync_plugins(plugin_set(plugins_dir, builtins=False), url)
    hostile = json.loads(read_pointer(s3_env.client(), _loc(url)).to_json())
    if field == "id":
        hostile["id"] = value
    else:
        hostile["plugins"][0]["name"] = value
    _put_pointer(s3_env, url, json.dumps(hostile).encode())
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError, match="malformed") as info:
        pull(url, cache)
    assert message in str(info.value)
    assert not _no_tmp(cache) and not (tmp_path / "escape").exists() and not (tmp_path / "up").exists()
    assert active_manifest(cache) is None


@pytest.mark.servers
def test_a_planted_store_folder_is_not_trusted(tmp_path, s3_env, url):
    plugins_dir = make_dir_plugin(tmp_path / "plugins", value=1.0)
    good = sync_plugins(plugin_set(plugins_dir, builtins=False), url)
    sha = good.manifest.by_name()["dirplug"].sha256 if hasattr(good, "manifest") else \
        read_pointer(s3_env.client(), _loc(url)).by_name()["dirplug"].sha256
    cache = tmp_path / "cache"
    make_dir_plugin(cache / "store" / sha, value=666.0)  # someone's folder under the right name
    report = pull(url, cache)
    assert report.fetched == [("dirplug", read_pointer(s3_env.client(), _loc(url)).by_name()["dirplug"].size)]
    assert (cache / "active" / "dirplug" / "PLUGIN_VERSION").read_text().strip() == "1.0"
    assert (cache / "store" / sha / ".sha256").read_text().strip() == sha
    assert not _no_tmp(cache)


KILLED_PULL = r"""
import sys, time
from gnomon.core.remote import pull as pull_mod
real = pull_mod.extract_bundle
def slow(data, dest, name):
    real(data, dest, name)
    print("EXTRACTED", flush=True)
    time.sleep(120)          # killed here, mid-pull, with its temporary folder in store/
pull_mod.extract_bundle = slow
pull_mod.pull(sys.argv[1], sys.argv[2], workers=1)
"""


@pytest.mark.servers
def test_the_tmp_folder_of_a_killed_pull_is_removed_by_the_next_pull(tmp_path, s3_env, url):
    plugins_dir = make_dir_plugin(tmp_path / "plugins")
    sync_plugins(plugin_set(plugins_dir, builtins=False), url)
    cache = tmp_path / "cache"
    env = {**os.environ, **s3_env.env()}
    child = subprocess.Popen([sys.executable, "-c", KILLED_PULL, url, str(cache)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "EXTRACTED"
        leftovers = [p for p in (cache / "store").iterdir() if p.name.startswith(".tmp-")]
        assert leftovers and any(leftovers[0].rglob("__init__.py"))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    old_style = cache / "store" / ".tmp-0123456789ab-old"       # an older gnomon's, two hours old
    old_style.mkdir()
    os.utime(old_style, (time.time() - 7200, time.time() - 7200))
    mine = cache / "store" / f".tmp-live-{os.getpid()}@{socket.gethostname()}-x"   # a live pull's: kept
    mine.mkdir()
    pull(url, cache)
    assert [p.name for p in (cache / "store").iterdir() if p.name.startswith(".tmp")] == [mine.name]
    assert (cache / "active" / "dirplug" / "PLUGIN_VERSION").read_text().strip() == "1.0"


CONCURRENT_PULL = r"""
import inspect, json, os, random, sys, time
from pathlib import Path
from gnomon.core.remote.pull import pull

url, cache, versions, rounds, seed = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
barrier = Path(sys.argv[6])
rng = random.Random(seed)
# start pulling together with the others (and the syncs), not one interpreter start-up after another
(barrier / f"ready-{seed}").touch()
while not (barrier / "go").exists():
    time.sleep(0.01)
kwargs = {"keep_sets": 1}
if "prune_grace_s" in inspect.signature(pull).parameters:
    kwargs["prune_grace_s"] = 0      # prune as hard as possible: only pins and the active set protect
problems, pulled = [], []
for _ in range(rounds):
    version = rng.choice(versions + [None])
    try:
        report = pull(url, cache, version=version, **kwargs)
    except Exception as exc:
        problems.append(f"{version}: {type(exc).__name__}: {exc}")
        continue
    pulled.append(report.manifest_id)
    # what this process now uses must be whole: every plugin of its manifest, every link alive
    manifest = json.loads((report.set_dir / ".manifest.json").read_text())
    for entry in manifest["plugins"]:
        link = report.set_dir / entry["name"]
        init = link / "__init__.py"
        if not link.is_symlink() or not link.exists() or not init.is_file():
            problems.append(f"{report.manifest_id}: plugin {entry['name']} broken (link {link.is_symlink()}, "
                            f"target {link.exists()})")
        elif "VALUE = " not in init.read_text():
            problems.append(f"{report.manifest_id}: plugin {entry['name']} has unexpected content")
print(json.dumps({"problems": problems, "pulled": pulled}))
"""


@pytest.mark.servers
def test_many_concurrent_pulls_into_one_cache_never_break_a_set(tmp_path, s3_env, url):
    plugins_dir = make_dir_plugin(tmp_path / "plugins", value=1.0)
    make_dir_plugin(plugins_dir, name="second", value=1.0, task="second_task")
    versions = []
    for value in (1.0, 2.0):
        make_dir_plugin(plugins_dir, value=value)
        versions.append(sync_plugins(plugin_set(plugins_dir, builtins=False), url).manifest_id)
    cache = tmp_path / "cache"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, **s3_env.env()}
    # 12 processes on a 2-core machine already interleave every step of a pull (most of a pull waits on
    # S3); more processes mostly add interpreter start-ups. They start pulling together, after their
    # imports, and each pulls 8 times: 96 pulls while three more versions are synced.
    n, rounds = 12, 8
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_PULL, url, str(cache), json.dumps(versions),
                               str(rounds), str(i), str(barrier)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(n)]
    deadline = time.monotonic() + 300
    while len(list(barrier.glob("ready-*"))) < n:
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, dead[0].communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the pull processes did not start"
        time.sleep(0.05)
    (barrier / "go").touch()
    # while they run, new versions appear (so "latest" moves and prune has old sets to remove)
    for value in (3.0, 4.0, 5.0):
        time.sleep(0.3)
        make_dir_plugin(plugins_dir, value=value)
        make_dir_plugin(plugins_dir, name="second", value=value, task="second_task")
        sync_plugins(plugin_set(plugins_dir, builtins=False), url)
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    problems = [x for r in results for x in r["problems"]]
    pulled = [x for r in results for x in r["pulled"]]
    print(f"{n} processes x {rounds} pulls: {len(pulled)} pulls of {len(set(pulled))} versions, "
          f"{len(problems)} problems")
    assert not problems, problems[:10]
    assert len(pulled) == n * rounds
    # and what the cache holds afterwards is whole: the active set and every set kept
    final = pull(url, cache, keep_sets=1)
    for set_path in (cache / "sets").iterdir():
        if set_path.name.startswith("."):
            continue
        for link in (p for p in set_path.iterdir() if not p.name.startswith(".")):
            assert link.exists(), f"broken link {link}"
    assert active_manifest(cache).id == final.manifest_id
    assert not [p for p in cache.rglob(".tmp*")]


@pytest.mark.servers
def test_a_manifest_naming_a_huge_bundle_is_refused_before_any_download(tmp_path, s3_env, url, monkeypatch):
    plugins_dir = make_dir_plugin(tmp_path / "plugins")
    sync_plugins(plugin_set(plugins_dir, builtins=False), url)
    hostile = json.loads(read_pointer(s3_env.client(), _loc(url)).to_json())
    hostile["id"] = "20990101T000000000000Z-000000000001"
    hostile["plugins"][0]["size"] = 300 * 2**20  # 300 MB claimed; the default cap is 256 MB
    _put_pointer(s3_env, url, json.dumps(hostile).encode())
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError, match=r"bundle of plugin 'dirplug' is 314572800 bytes; GNOMON_BUNDLE_MAX_MB"):
        pull(url, cache)
    assert active_manifest(cache) is None and not (cache / "store").exists()  # nothing fetched
    monkeypatch.setenv("GNOMON_BUNDLE_MAX_MB", "1024")  # a larger cap lets it through to the size check
    with pytest.raises(IntegrityError, match="truncated or altered"):
        pull(url, cache)


@pytest.mark.servers
def test_an_object_larger_than_its_recorded_size_is_not_read_whole(tmp_path, s3_env, url):
    from gnomon.core.remote.s3 import read_body

    plugins_dir = make_dir_plugin(tmp_path / "plugins")
    sync_plugins(plugin_set(plugins_dir, builtins=False), url)
    manifest = json.loads(read_pointer(s3_env.client(), _loc(url)).to_json())
    entry = manifest["plugins"][0]
    bucket = _loc(url).bucket
    s3_env.client().put_object(Bucket=bucket, Key=entry["key"], Body=b"x" * (3 * 2**20))  # swapped for 3 MB
    with pytest.raises(IntegrityError, match=f"larger than {entry['size']} bytes"):
        pull(url, tmp_path / "cache")
    # the reader stops after the limit is passed: it never holds the whole object
    body = s3_env.client().get_object(Bucket=bucket, Key=entry["key"])
    with pytest.raises(IntegrityError, match="larger than 100 bytes"):
        read_body(body, 100, "probe")
