"""The manifest of one sync: which bundle (sha256, size, key) is which plugin.

Stored twice, both written after every bundle is in place: the versioned copy
``PREFIX/manifests/<id>.json`` (jobs name the version they were submitted against) and
the pointer ``PREFIX/manifest.json`` (the latest sync). Each is a single S3 object, so a
reader sees either the old or the new manifest in full, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

from . import IntegrityError

FORMAT = 1
POINTER = "manifest.json"


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
            entries = [Entry(**{k: e[k] for k in Entry.__dataclass_fields__}) for e in raw["plugins"]]
            for e in entries:
                if len(e.sha256) != 64 or not isinstance(e.size, int):
                    raise ValueError(f"plugin '{e.name}' has a malformed sha256 or size")
            return cls(id=str(raw["id"]), created=str(raw["created"]), gnomon_version=str(raw.get("gnomon_version", "")),
                       plugins=entries)
        except (ValueError, KeyError, TypeError) as exc:
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
