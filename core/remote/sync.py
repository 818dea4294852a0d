"""``gnomon plugins sync``: upload every loaded plugin as a bundle, then the manifest.

Order of writes, which is what makes a sync safe to interrupt or to run twice at once:

1. bundles (content-addressed, so an existing key already has the right bytes; a HEAD with the
   right size skips the upload) - in parallel threads;
2. the versioned manifest ``PREFIX/manifests/<id>.json``;
3. the pointer ``PREFIX/manifest.json`` - one PUT, atomic for readers.

A sync that stops before step 3 leaves the previous pointer in force (its bundles are never
overwritten). Two concurrent syncs each write complete manifests; the pointer ends up as one of
them, never a mix. ``--delete`` removes bundles referenced neither by the current manifest nor by
a manifest younger than ``keep_for`` seconds (so in-flight jobs and concurrent syncs keep theirs).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from . import RemoteError
from .bundle import Bundle, build_bundle, bundle_name
from .manifest import Entry, Manifest, manifest_key, new_manifest, pointer_key
from .s3 import MANIFEST_MAX_BYTES, S3Location, is_not_found, make_client, parse_s3_url, read_body, s3_errors


@dataclass
class SyncReport:
    """What a sync did (or, with ``dry_run``, would do)."""

    location: str
    manifest_id: str
    uploaded: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    not_synced: list[tuple[str, str]] = field(default_factory=list)
    manifest_written: bool = False
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def bytes_uploaded(self) -> int:
        return sum(size for _, size in self.uploaded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "location": self.location, "manifest": self.manifest_id, "dry_run": self.dry_run,
            "uploaded": [{"plugin": n, "bytes": s} for n, s in self.uploaded], "skipped": self.skipped,
            "bytes_uploaded": self.bytes_uploaded, "deleted": self.deleted, "manifest_written": self.manifest_written,
            "not_synced": [{"plugin": n, "reason": r} for n, r in self.not_synced], "seconds": round(self.seconds, 3),
        }


def read_pointer(client, location: S3Location, endpoint: str | None = None) -> Manifest | None:
    """The manifest ``PREFIX/manifest.json`` points at, or None when nothing was synced yet."""
    key = pointer_key(location)
    with s3_errors("read", f"s3://{location.bucket}/{key}", endpoint):
        try:
            data = read_body(client.get_object(Bucket=location.bucket, Key=key), MANIFEST_MAX_BYTES,
                             f"s3://{location.bucket}/{key}")
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
    return Manifest.from_json(data, f"s3://{location.bucket}/{key}")


def build_bundles(groups, workers: int = 4) -> list[Bundle]:
    """Bundles built in parallel, sorted by name: one per group of loaded PluginInfos that ship together.

    A group is one plugin, or the loaded parts of one plugin package (their names go to ``PLUGIN_PARTS``).
    """
    def build(group):
        parts = [info.name.split(".", 1)[1] for info in group] if group[0].package else None
        return build_bundle(group[0], parts)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return sorted(pool.map(build, [list(g) for g in groups]), key=lambda b: b.name)


def sync_plugins(
    plugins,
    url: str,
    *,
    endpoint: str | None = None,
    dry_run: bool = False,
    delete: bool = False,
    keep_for: float = 3600.0,
    workers: int = 8,
    client=None,
    on_bundle: Callable[[str, str, int], None] | None = None,
) -> SyncReport:
    """Sync every loaded plugin of ``plugins`` (a :class:`~gnomon.core.plugins.PluginSet`) to ``url``.

    ``on_bundle(name, "uploaded"|"skipped", bytes)`` is called as each bundle is handled (progress).
    Raises :class:`RemoteError` with a one-line message for S3 failures.
    """
    started = time.perf_counter()
    location = parse_s3_url(url)
    client = client or make_client(endpoint)
    # one bundle per plugin or plugin package (the parts of a package ship together)
    groups: dict[str, list] = {}
    for info in plugins.loaded:
        if info.source != "test":
            groups.setdefault(bundle_name(info), []).append(info)
    report = SyncReport(location=str(location), manifest_id="", dry_run=dry_run)
    report.not_synced = [(i.name, f"broken: {i.error}") for i in plugins.broken]
    bundles = build_bundles(groups.values())
    current = read_pointer(client, location, endpoint)

    def handle(bundle: Bundle) -> tuple[str, Bundle]:
        key = bundle.key(location)
        where = f"s3://{location.bucket}/{key}"
        with s3_errors("check", where, endpoint):
            try:
                head = client.head_object(Bucket=location.bucket, Key=key)
                if int(head.get("ContentLength", -1)) == bundle.size:
                    if on_bundle:
                        on_bundle(bundle.name, "skipped", 0)
                    return "skipped", bundle
            except Exception as exc:
                if not is_not_found(exc):
                    raise
        if not dry_run:
            with s3_errors("upload", where, endpoint):
                client.put_object(Bucket=location.bucket, Key=key, Body=bundle.data, ContentType="application/gzip",
                                  Metadata={"sha256": bundle.sha256, "plugin": bundle.name})
        if on_bundle:
            on_bundle(bundle.name, "uploaded", bundle.size)
        return "uploaded", bundle

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for outcome, bundle in pool.map(handle, bundles):
            if outcome == "skipped":
                report.skipped.append(bundle.name)
            else:
                report.uploaded.append((bundle.name, bundle.size))

    entries = [Entry(name=b.name, version=b.version, sha256=b.sha256, size=b.size, source=b.source,
                     module=b.module, key=b.key(location)) for b in bundles]
    manifest = new_manifest(entries)
    if current is not None and current.content_digest() == manifest.content_digest():
        manifest = current  # nothing changed: keep the current version, write nothing
    elif not dry_run:
        write_manifest(client, location, manifest, endpoint)
        report.manifest_written = True
    report.manifest_id = manifest.id
    if delete:
        report.deleted = delete_unreferenced(client, location, manifest, keep_for=keep_for, dry_run=dry_run,
                                             endpoint=endpoint)
    report.seconds = time.perf_counter() - started
    return report


def write_manifest(client, location: S3Location, manifest: Manifest, endpoint: str | None = None) -> None:
    """Write the versioned manifest, then replace the pointer (the last write of a sync)."""
    body = manifest.to_json()
    for key in (manifest_key(location, manifest.id), pointer_key(location)):
        with s3_errors("write", f"s3://{location.bucket}/{key}", endpoint):
            client.put_object(Bucket=location.bucket, Key=key, Body=body, ContentType="application/json")


def _list(client, bucket: str, prefix: str) -> list[dict]:
    out: list[dict] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(page.get("Contents", []))
    return out


def delete_unreferenced(client, location: S3Location, current: Manifest, *, keep_for: float = 3600.0,
                        dry_run: bool = False, endpoint: str | None = None) -> list[str]:
    """Delete bundles (and old manifests) not referenced by ``current`` nor by a manifest younger than ``keep_for``."""
    where = str(location)
    now = time.time()
    keep_keys = {e.key for e in current.plugins}
    doomed: list[str] = []
    with s3_errors("list", where, endpoint):
        for obj in _list(client, location.bucket, location.key("manifests") + "/"):
            key = obj["Key"]
            if key == manifest_key(location, current.id):
                continue
            age = now - obj["LastModified"].timestamp()
            if age < keep_for:
                data = read_body(client.get_object(Bucket=location.bucket, Key=key), MANIFEST_MAX_BYTES,
                                 f"s3://{location.bucket}/{key}")
                keep_keys.update(e.key for e in Manifest.from_json(data, f"s3://{location.bucket}/{key}").plugins)
            else:
                doomed.append(key)
        for obj in _list(client, location.bucket, location.key("bundles") + "/"):
            if obj["Key"] not in keep_keys:
                doomed.append(obj["Key"])
    if doomed and not dry_run:
        with s3_errors("delete", where, endpoint):
            for i in range(0, len(doomed), 1000):
                response = client.delete_objects(Bucket=location.bucket, Delete={
                    "Objects": [{"Key": k} for k in doomed[i:i + 1000]], "Quiet": True})
                if response.get("Errors"):
                    first = response["Errors"][0]
                    raise RemoteError(f"cannot delete s3://{location.bucket}/{first.get('Key')}: {first.get('Code')}")
    return sorted(doomed)
