"""The manifest of one sync: which bundle (sha256, size, key) is which plugin.

Stored twice, both written after every bundle is in place: the versioned copy
``PREFIX/manifests/<id>.json`` (jobs name the version they were submitted against) and
the pointer ``PREFIX/manifest.json`` (the latest sync). Each is a single S3 object, so a
reader sees either the old or the new manifest in full, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field

from . import IntegrityError

FORMAT = 1
POINTER = "manifest.json"

#: A bundle digest: exactly 64 lowercase hex digits (it names a folder of the plugin cache).
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: A manifest id (names a folder of the plugin cache and an S3 key): no separators, no leading dot.
ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,199}$")
#: A plugin name (names a file or folder of a plugin set): no separators, no leading dot.
NAME_RE = re.compile(r"^[0-9A-Za-z_][0-9A-Za-z_.-]{0,199}$")


def check_entry(e: Entry) -> None:
    """Raise ``ValueError`` naming what is wrong with one manifest entry."""
    if not isinstance(e.name, str) or not NAME_RE.match(e.name):
        raise ValueError(f"plugin name {e.name!r} is not a safe name (letters, digits, '_', '.', '-'; "
                         "no '/', not starting with '.')")
    if not isinstance(e.sha256, str) or not SHA256_RE.match(e.sha256):
        raise ValueError(f"plugin '{e.name}' has a malformed sha256 {str(e.sha256)[:80]!r} "
                         "(expected 64 lowercase hex digits)")
    if not isinstance(e.size, int) or isinstance(e.size, bool) or e.size < 0:
        raise ValueError(f"plugin '{e.name}' has a malformed size {e.size!r}")
    for attr in ("version", "source", "module", "key"):
        if not isinstance(getattr(e, attr), str):
            raise ValueError(f"plugin '{e.name}' has a malformed {attr}")
    if not e.key or e.key.startswith("/") or "\x00" in e.key:
        raise ValueError(f"plugin '{e.name}' has a malformed object key {e.key!r}")


@dataclass(frozen=True)
class Entry:
    """One plugin in a manifest."""

    name: str
    version: str
    sha256: str
    size: int
    source: str
    module: str
    key: str


@dataclass
class Manifest:
    """A complete, consistent set of plugin bundles."""

    id: str
    created: str
    gnomon_version: str
    plugins: list[Entry] = field(default_factory=list)
    format: int = FORMAT

    def by_name(self) -> dict[str, Entry]:
        return {e.name: e for e in self.plugins}

    def content_digest(self) -> str:
        """sha256 over (name, sha256) of every plugin: equal digests mean identical plugin sets."""
        text = "\n".join(f"{e.name} {e.sha256}" for e in sorted(self.plugins, key=lambda e: e.name))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> bytes:
        data = asdict(self)
        data["plugins"] = [asdict(e) for e in sorted(self.plugins, key=lambda e: e.name)]
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parse and check a manifest; a malformed one is an :class:`IntegrityError` naming ``where``."""
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT}")
            if not isinstance(raw.get("id"), str) or not ID_RE.match(raw["id"]):
                raise ValueError(f"id {str(raw.get('id'))[:80]!r} is not a safe manifest id (letters, digits, "
                                 "'.', '_', '-'; no '/', not starting with '.')")
            if not isinstance(raw.get("plugins"), list):
                raise ValueError("'plugins' must be a list")
            entries = [Entry(**{k: e[k] for k in Entry.__dataclass_fields__}) for e in raw["plugins"]]
            for e in entries:
                check_entry(e)
            names = [e.name for e in entries]
            if len(set(names)) != len(names):
                raise ValueError("a plugin is listed twice")
            return cls(id=raw["id"], created=str(raw["created"]), gnomon_version=str(raw.get("gnomon_version", "")),
                       plugins=entries)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"manifest {where} is malformed: {exc}") from None


def new_manifest(entries: list[Entry]) -> Manifest:
    """A manifest with a fresh, time-ordered id ``YYYYmmddTHHMMSSffffffZ-<digest12>``."""
    from .. import __version__

    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int((now % 1) * 1e6):06d}Z"
    manifest = Manifest(id="", created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                        gnomon_version=__version__, plugins=sorted(entries, key=lambda e: e.name))
    manifest.id = f"{stamp}-{manifest.content_digest()[:12]}"
    return manifest


def manifest_key(location, manifest_id: str) -> str:
    return location.key("manifests", f"{manifest_id}.json")


def pointer_key(location) -> str:
    return location.key(POINTER)
