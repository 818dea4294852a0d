"""``gnomon plugins pull``: fetch a manifest's bundles into the local plugin cache and activate them.

Cache layout (default ``$GNOMON_HOME/plugin-cache``)::

    store/<sha256>/<entry>     one verified, extracted bundle (entry: NAME/ or NAME.py)
    sets/<manifest id>/        one complete plugin set: symlinks to store entries + .manifest.json
    active -> sets/<id>        the set in use; GNOMON_PLUGIN_PATH points here

Every directory is built under a temporary name and renamed into place, and ``active`` is
replaced with ``os.replace`` of a new symlink, so a failed pull (tampered or truncated
bundle, unsafe path, network error) never changes what is in use.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import IntegrityError, RemoteError
from .bundle import extract_bundle, verify
from .manifest import Entry, Manifest, manifest_key
from .s3 import S3Location, is_not_found, make_client, parse_s3_url, s3_errors
from .sync import read_pointer

VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
MANIFEST_FILE = ".manifest.json"


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
            data = client.get_object(Bucket=location.bucket, Key=key)["Body"].read()
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
    on_bundle: Callable[[str, str, int], None] | None = None,
) -> PullReport:
    """Make manifest ``version`` (default: the latest sync) the active plugin set of ``cache``.

    Only bundles not already in the cache are fetched; each is checked against the manifest's
    size and sha256 and extracted safely. Any failure raises and leaves the active set as it was.
    """
    started = time.perf_counter()
    cache = Path(cache) if cache is not None else default_cache()
    location = parse_s3_url(url)
    if version is not None:
        check_version(version)
        ready = set_dir(cache, version)
        if (ready / MANIFEST_FILE).is_file():  # a complete set of this exact version: no S3 call
            changed = _activate(cache, ready)
            return PullReport(str(location), version, ready, reused=sorted(p.name for p in _members(ready)),
                              changed=changed, seconds=time.perf_counter() - started)
    client = client or make_client(endpoint)
    manifest = read_manifest(client, location, version, endpoint)
    report = PullReport(str(location), manifest.id, set_dir(cache, manifest.id))
    store = cache / "store"
    store.mkdir(parents=True, exist_ok=True)

    def fetch(entry: Entry) -> tuple[str, Entry]:
        target = store / entry.sha256
        if target.is_dir():
            if on_bundle:
                on_bundle(entry.name, "reused", 0)
            return "reused", entry
        where = f"s3://{location.bucket}/{entry.key}"
        with s3_errors("download", where, endpoint):
            try:
                data = client.get_object(Bucket=location.bucket, Key=entry.key)["Body"].read()
            except Exception as exc:
                if is_not_found(exc):
                    raise RemoteError(f"bundle of plugin '{entry.name}' is missing at {where} "
                                      f"(deleted by 'sync --delete'?)") from None
                raise
        verify(data, entry.name, entry.sha256, entry.size)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.sha256[:12]}-", dir=store))
        try:
            extract_bundle(data, tmp / "x", entry.name)
            try:
                os.rename(tmp / "x", target)
            except OSError:
                if not target.is_dir():  # not a concurrent pull of the same bundle
                    raise
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
    if not (target / MANIFEST_FILE).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{manifest.id}-", dir=target.parent))
        os.chmod(tmp, 0o755)
        for entry in manifest.plugins:
            entry_dir = store / entry.sha256
            name = _entry_name(entry, entry_dir)
            os.symlink(os.path.relpath(entry_dir / name, tmp), tmp / name)
        (tmp / MANIFEST_FILE).write_bytes(manifest.to_json())
        try:
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / MANIFEST_FILE).is_file():
                raise
    report.changed = _activate(cache, target)
    if keep_sets:
        prune(cache, keep=keep_sets)
    report.seconds = time.perf_counter() - started
    return report


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


def prune(cache: Path, keep: int = 5) -> None:
    """Remove all but the ``keep`` newest sets (never the active one) and store entries no set uses."""
    sets_root = Path(cache) / "sets"
    if not sets_root.is_dir():
        return
    active = active_dir(cache).resolve() if active_dir(cache).exists() else None
    sets = sorted((p for p in sets_root.iterdir() if not p.name.startswith(".")), key=lambda p: p.name, reverse=True)
    for old in sets[keep:]:
        if old.resolve() != active:
            shutil.rmtree(old, ignore_errors=True)
    used = set()
    for s in sets_root.iterdir():
        if s.is_dir() and not s.name.startswith("."):
            for link in _members(s):
                if link.is_symlink():
                    used.add(Path(os.path.realpath(link)).parent.name)
    store = Path(cache) / "store"
    for entry in store.iterdir() if store.is_dir() else []:
        if not entry.name.startswith(".") and entry.name not in used:
            shutil.rmtree(entry, ignore_errors=True)


def load_synced_plugins(plugin_dir: str | os.PathLike):
    """Exactly the plugins in ``plugin_dir`` (a pulled set): no builtins or entry points of this environment."""
    from ..plugins import load_plugins

    return load_plugins(builtins=False, entry_points=[], plugin_path=[str(plugin_dir)], load=None, disable=[],
                        environ={})
