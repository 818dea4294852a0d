"""``gnomon plugins pull``: fetch a manifest's bundles into the local plugin cache and activate them.

Cache layout (default ``$GNOMON_HOME/plugin-cache``)::

    store/<sha256>/<entry>     one verified, extracted bundle (entry: NAME/ or NAME.py)
    sets/<manifest id>/        one complete plugin set: symlinks to store entries + .manifest.json
    active -> sets/<id>        the set in use; GNOMON_PLUGIN_PATH points here

Every directory is built under a temporary name and renamed into place, and ``active`` is
replaced with ``os.replace`` of a new symlink, so a failed pull (tampered or truncated
bundle, unsafe path, network error) never changes what is in use.

Any number of processes may pull into one cache at once (:class:`CacheLock`): a pull holds a
shared lock on ``.lock`` while it fetches, builds and activates; pruning needs the exclusive
lock and is skipped (left to a later pull) while anyone else is pulling, and it never removes
the active set, the newest ``keep`` sets or a set used in the last :data:`PRUNE_GRACE_S` seconds.
A store entry is trusted only when its ``.sha256`` marker (written after verification, moved
into place with the entry) equals its digest, and a cached set only when every link leads to
such an entry; anything else is fetched again. Temporary folders left by a killed pull
(``.tmp-*``, named after their owner's pid and host) are removed by the next pull.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import settings
from . import IntegrityError, RemoteError
from .bundle import extract_bundle, verify
from .manifest import ID_RE, Entry, Manifest, manifest_key
from .s3 import MANIFEST_MAX_BYTES, S3Location, is_not_found, make_client, parse_s3_url, read_body, s3_errors
from .sync import read_pointer

VERSION_RE = ID_RE
MANIFEST_FILE = ".manifest.json"
#: In a store entry: the sha256 it was verified against (the entry is trusted only if it matches).
DIGEST_FILE = ".sha256"
#: A set used (pulled or activated) this recently is never pruned: a worker may still be loading it.
PRUNE_GRACE_S = 3600.0
#: A temporary folder of an unknown owner (older gnomon) is stale after this long.
STALE_TMP_S = 3600.0
_TMP_OWNER = re.compile(r"^\.tmp-.*-(\d+)@(.+)-[^-]*$")


class CacheLock:
    """An advisory ``flock`` on ``CACHE/.lock``: shared while pulling, exclusive to prune.

    ``flock`` locks belong to the open file, so threads of one process and separate processes
    alike are excluded; the kernel drops them when a process dies, so a killed pull never
    leaves the cache locked.
    """

    def __init__(self, cache: Path):
        self.path = Path(cache) / ".lock"

    @contextlib.contextmanager
    def shared(self):
        """Hold the shared lock (waits while a prune runs)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive_or_skip(self):
        """Yield True holding the exclusive lock, or False at once when another process holds any lock."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _tmp_prefix(tag: str) -> str:
    """Prefix of a temporary folder owned by this process: ``.tmp-<tag>-<pid>@<host>-``."""
    return f".tmp-{tag}-{os.getpid()}@{socket.gethostname()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(path: Path) -> bool:
    """Whether a ``.tmp-*`` folder's owner is gone (dead pid on this host; unknown owner: old)."""
    match = _TMP_OWNER.match(path.name)
    if match and match.group(2) == socket.gethostname():
        return not _pid_alive(int(match.group(1)))
    try:
        return time.time() - path.lstat().st_mtime > STALE_TMP_S
    except FileNotFoundError:
        return False


def clean_stale_tmp(cache: Path) -> list[Path]:
    """Remove temporary folders (``store/.tmp-*``, ``sets/.tmp-*``) whose pull is no longer running."""
    removed = []
    for folder in (Path(cache) / "store", Path(cache) / "sets"):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith((".tmp-", ".old-")) and _stale(entry):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def store_entry_ok(entry_dir: Path, entry: Entry) -> bool:
    """Whether ``store/<sha256>`` holds a verified extraction of ``entry``'s bundle."""
    try:
        recorded = (entry_dir / DIGEST_FILE).read_text().strip()
    except OSError:
        return False
    return recorded == entry.sha256 and ((entry_dir / entry.name).is_dir() or (entry_dir / f"{entry.name}.py").is_file())


def set_intact(set_path: Path, manifest: Manifest, store: Path) -> bool:
    """Whether every plugin of ``manifest`` in ``set_path`` links to a trusted store entry."""
    for entry in manifest.plugins:
        entry_dir = store / entry.sha256
        if not store_entry_ok(entry_dir, entry):
            return False
        name = _entry_name(entry, entry_dir)
        link = set_path / name
        if not link.is_symlink() or os.readlink(link) != os.path.relpath(entry_dir / name, set_path):
            return False
    return True


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path, follow_symlinks=False)


def default_cache() -> Path:
    """``$GNOMON_PLUGIN_CACHE``, else ``$GNOMON_HOME/plugin-cache``."""
    from .. import settings
    from ..tracking import gnomon_home

    explicit = settings.text("GNOMON_PLUGIN_CACHE")
    return Path(explicit).expanduser() if explicit else gnomon_home() / "plugin-cache"


def active_dir(cache: Path) -> Path:
    """The directory to put on ``GNOMON_PLUGIN_PATH``."""
    return Path(cache) / "active"


def set_dir(cache: Path, manifest_id: str) -> Path:
    return Path(cache) / "sets" / manifest_id


def active_manifest(cache: Path) -> Manifest | None:
    """The manifest of the active set, or None when nothing was pulled."""
    path = active_dir(cache) / MANIFEST_FILE
    try:
        return Manifest.from_json(path.read_bytes(), str(path))
    except (OSError, IntegrityError):
        return None


@dataclass
class PullReport:
    """What a pull fetched and what is now active."""

    location: str
    manifest_id: str
    set_dir: Path
    fetched: list[tuple[str, int]] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    changed: bool = False
    seconds: float = 0.0

    @property
    def bytes_fetched(self) -> int:
        return sum(s for _, s in self.fetched)

    def to_dict(self) -> dict[str, Any]:
        return {"location": self.location, "manifest": self.manifest_id, "path": str(self.set_dir.parent.parent / "active"),
                "fetched": [{"plugin": n, "bytes": s} for n, s in self.fetched], "reused": self.reused,
                "bytes_fetched": self.bytes_fetched, "changed": self.changed, "seconds": round(self.seconds, 3)}


def read_manifest(client, location: S3Location, version: str | None, endpoint: str | None = None) -> Manifest:
    """The manifest ``version`` (or the pointer's) from S3; a missing one is a clear error."""
    if version is None:
        manifest = read_pointer(client, location, endpoint)
        if manifest is None:
            raise RemoteError(f"nothing was synced to {location} yet (no manifest.json); run 'gnomon plugins sync' first")
        return manifest
    check_version(version)
    key = manifest_key(location, version)
    with s3_errors("read", f"s3://{location.bucket}/{key}", endpoint):
        try:
            data = read_body(client.get_object(Bucket=location.bucket, Key=key), MANIFEST_MAX_BYTES,
                             f"manifest s3://{location.bucket}/{key}")
        except IntegrityError:
            raise
        except Exception as exc:
            if is_not_found(exc):
                raise RemoteError(f"manifest version '{version}' does not exist at {location}") from None
            raise
    manifest = Manifest.from_json(data, f"s3://{location.bucket}/{key}")
    if manifest.id != version:
        raise IntegrityError(f"manifest s3://{location.bucket}/{key} claims to be version '{manifest.id}'")
    return manifest


def check_version(version: str) -> None:
    if not VERSION_RE.match(version or ""):
        raise RemoteError(f"'{version}' is not a manifest version (expected something like 20261124T203700000000Z-ab12cd34ef56)")


def _entry_name(entry: Entry, store_dir: Path) -> str:
    return entry.name + ".py" if (store_dir / f"{entry.name}.py").is_file() else entry.name


def pull(
    url: str,
    cache: str | os.PathLike | None = None,
    *,
    version: str | None = None,
    endpoint: str | None = None,
    client=None,
    workers: int = 8,
    keep_sets: int = 5,
    prune_grace_s: float = PRUNE_GRACE_S,
    on_bundle: Callable[[str, str, int], None] | None = None,
) -> PullReport:
    """Make manifest ``version`` (default: the latest sync) the active plugin set of ``cache``.

    Only bundles not already in the cache are fetched; each is checked against the manifest's
    size and sha256 and extracted safely. Any failure raises and leaves the active set as it was.
    Safe to run from many processes at once on one cache (see the module docstring).
    """
    started = time.perf_counter()
    cache = Path(cache) if cache is not None else default_cache()
    location = parse_s3_url(url)
    if version is not None:
        check_version(version)
    cache.mkdir(parents=True, exist_ok=True)
    lock = CacheLock(cache)
    with lock.shared():
        clean_stale_tmp(cache)
        report = _pull_locked(cache, location, version, endpoint, client, workers, on_bundle, started)
    if keep_sets:
        prune(cache, keep=keep_sets, grace_s=prune_grace_s)
    report.seconds = time.perf_counter() - started
    return report


def _pull_locked(cache: Path, location: S3Location, version: str | None, endpoint: str | None, client,
                 workers: int, on_bundle, started: float) -> PullReport:
    store = cache / "store"
    if version is not None:
        ready = set_dir(cache, version)
        try:
            cached = Manifest.from_json((ready / MANIFEST_FILE).read_bytes(), str(ready / MANIFEST_FILE))
        except (OSError, IntegrityError):
            cached = None
        if cached is not None and cached.id == version and set_intact(ready, cached, store):
            _touch(ready)  # a complete, verified set of this exact version: no S3 call
            pin(cache, version)
            changed = _activate(cache, ready)
            return PullReport(str(location), version, ready, reused=sorted(p.name for p in _members(ready)),
                              changed=changed, seconds=time.perf_counter() - started)
    client = client or make_client(endpoint)
    manifest = read_manifest(client, location, version, endpoint)
    cap = settings.bundle_max_bytes()
    too_big = [e for e in manifest.plugins if e.size > cap]
    if too_big:  # refused before any download: a manifest cannot make a worker fetch gigabytes
        raise IntegrityError(", ".join(f"bundle of plugin '{e.name}' is {e.size} bytes" for e in too_big)
                             + f"; GNOMON_BUNDLE_MAX_MB allows {cap} bytes; refusing manifest {manifest.id}")
    report = PullReport(str(location), manifest.id, set_dir(cache, manifest.id))
    store.mkdir(parents=True, exist_ok=True)

    def fetch(entry: Entry) -> tuple[str, Entry]:
        target = store / entry.sha256
        if store_entry_ok(target, entry):
            if on_bundle:
                on_bundle(entry.name, "reused", 0)
            return "reused", entry
        where = f"s3://{location.bucket}/{entry.key}"
        with s3_errors("download", where, endpoint):
            try:
                # at most the size the manifest recorded: a bigger object is altered, and is not read
                data = read_body(client.get_object(Bucket=location.bucket, Key=entry.key), entry.size,
                                 f"bundle of plugin '{entry.name}' ({where})")
            except IntegrityError:
                raise
            except Exception as exc:
                if is_not_found(exc):
                    raise RemoteError(f"bundle of plugin '{entry.name}' is missing at {where} "
                                      f"(deleted by 'sync --delete'?)") from None
                raise
        verify(data, entry.name, entry.sha256, entry.size)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(entry.sha256[:12]), dir=store))
        try:
            extract_bundle(data, tmp / "x", entry.name)
            (tmp / "x" / DIGEST_FILE).write_text(entry.sha256 + "\n")
            _replace_dir(tmp / "x", target, lambda: store_entry_ok(target, entry), tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if on_bundle:
            on_bundle(entry.name, "fetched", entry.size)
        return "fetched", entry

    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(fetch, e) for e in manifest.plugins]
        for future in futures:
            try:
                outcome, entry = future.result()
            except RemoteError as exc:
                errors.append(str(exc))
                continue
            if outcome == "fetched":
                report.fetched.append((entry.name, entry.size))
            else:
                report.reused.append(entry.name)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        kind = IntegrityError if any("refusing" in e or "truncated" in e for e in errors) else RemoteError
        raise kind(errors[0] + more + "; the plugin set in use was not changed")

    target = report.set_dir
    try:
        existing = Manifest.from_json((target / MANIFEST_FILE).read_bytes(), str(target))
    except (OSError, IntegrityError):
        existing = None
    if existing is None or existing.id != manifest.id or not set_intact(target, existing, store):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix("set"), dir=target.parent))
        try:
            os.chmod(tmp, 0o755)
            built = tmp / "set"
            built.mkdir()
            for entry in manifest.plugins:
                entry_dir = store / entry.sha256
                name = _entry_name(entry, entry_dir)
                os.symlink(os.path.relpath(entry_dir / name, target), built / name)
            (built / MANIFEST_FILE).write_bytes(manifest.to_json())
            _replace_dir(built, target, lambda: set_intact(target, manifest, store), tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _touch(target)
    pin(cache, manifest.id)
    report.changed = _activate(cache, target)
    return report


def _replace_dir(built: Path, target: Path, good: Callable[[], bool], scratch: Path) -> None:
    """Move ``built`` to ``target``; a ``target`` that is not ``good()`` (damaged, untrusted) is replaced.

    A concurrent process that put a good ``target`` in place first wins; ours is dropped.
    """
    try:
        os.rename(built, target)
        return
    except OSError:
        if good():
            return
    # a damaged or untrusted folder is in the way: move it aside (into our scratch folder), then retry
    with contextlib.suppress(OSError):
        os.rename(target, scratch / "old")
    try:
        os.rename(built, target)
    except OSError:
        if not good():
            raise


def _members(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if not p.name.startswith(".")]


def _activate(cache: Path, target: Path) -> bool:
    """Point ``cache/active`` at ``target`` atomically; True if it changed."""
    active = active_dir(cache)
    relative = os.path.relpath(target, cache)
    if active.is_symlink() and os.readlink(active) == relative:
        return False
    tmp = cache / f".active-{os.getpid()}-{time.monotonic_ns()}"
    os.symlink(relative, tmp)
    os.replace(tmp, active)
    return True


def _pin_dir(cache: Path, manifest_id: str) -> Path:
    return Path(cache) / "pins" / manifest_id


def pin(cache: Path, manifest_id: str) -> Path:
    """Record that this process uses set ``manifest_id``: prune keeps it while this process lives."""
    path = _pin_dir(cache, manifest_id) / f"{os.getpid()}@{socket.gethostname()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def _live_pins(cache: Path, manifest_id: str, grace_s: float) -> bool:
    """Whether a live process pinned the set; dead pins (this host) are removed on the way."""
    folder = _pin_dir(cache, manifest_id)
    live = False
    for p in folder.iterdir() if folder.is_dir() else []:
        pid, _, host = p.name.partition("@")
        if host == socket.gethostname() and pid.isdigit():
            if _pid_alive(int(pid)):
                live = True
            else:
                p.unlink(missing_ok=True)
        else:  # another host's process: trust the pin for a while
            with contextlib.suppress(FileNotFoundError):
                if time.time() - p.stat().st_mtime < max(grace_s, STALE_TMP_S):
                    live = True
    return live


def prune(cache: Path, keep: int = 5, *, grace_s: float = PRUNE_GRACE_S) -> bool:
    """Remove old sets and the store entries no set uses; False when skipped because others are pulling.

    Kept: the active set, the ``keep`` newest sets, sets a live process pinned (:func:`pin`), and
    sets used in the last ``grace_s`` seconds. Runs only under the exclusive :class:`CacheLock`,
    which it does not wait for: while another process pulls, pruning is left to a later pull.
    """
    cache = Path(cache)
    sets_root = cache / "sets"
    if not sets_root.is_dir():
        return True
    with CacheLock(cache).exclusive_or_skip() as locked:
        if not locked:
            return False
        clean_stale_tmp(cache)
        active = active_dir(cache).resolve() if active_dir(cache).exists() else None
        sets = sorted((p for p in sets_root.iterdir() if not p.name.startswith(".")), key=lambda p: p.name,
                      reverse=True)
        now = time.time()
        for old in sets[keep:]:
            if old.resolve() == active or _live_pins(cache, old.name, grace_s):
                continue
            with contextlib.suppress(FileNotFoundError):
                if grace_s and now - old.lstat().st_mtime < grace_s:
                    continue
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(_pin_dir(cache, old.name), ignore_errors=True)
        pins_root = cache / "pins"
        for folder in pins_root.iterdir() if pins_root.is_dir() else []:
            if not (sets_root / folder.name).is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                _live_pins(cache, folder.name, grace_s)  # drops dead pins of the sets kept
        used = set()
        for s in sets_root.iterdir():
            if s.is_dir() and not s.name.startswith("."):
                for link in _members(s):
                    if link.is_symlink():
                        used.add(Path(os.path.realpath(link)).parent.name)
        store = cache / "store"
        for entry in store.iterdir() if store.is_dir() else []:
            if not entry.name.startswith(".") and entry.name not in used:
                shutil.rmtree(entry, ignore_errors=True)
        for stray in cache.glob(".active-*"):
            pid = stray.name.split("-")[1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                stray.unlink(missing_ok=True)
    return True


def load_synced_plugins(plugin_dir: str | os.PathLike):
    """Exactly the plugins in ``plugin_dir`` (a pulled set): no builtins or entry points of this environment."""
    from ..plugins import load_plugins

    return load_plugins(builtins=False, entry_points=[], plugin_path=[str(plugin_dir)], load=None, disable=[],
                        environ={})
