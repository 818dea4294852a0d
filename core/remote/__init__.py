"""Remote execution: plugin bundles synced to S3, pulled by workers, and jobs run by RQ workers.

Modules (each with one job):

- :mod:`.s3` parse ``s3://BUCKET/PREFIX`` URLs, build boto3 clients, turn S3 errors into one-line messages;
- :mod:`.bundle` deterministic, content-addressed plugin bundles and safe extraction;
- :mod:`.manifest` the manifest format (which bundle is which plugin, for one sync);
- :mod:`.sync` ``gnomon plugins sync``; :mod:`.pull` ``gnomon plugins pull`` and the plugin cache;
- :mod:`.jobs` submitting, listing, showing and cancelling RQ jobs;
- :mod:`.worker` the RQ worker and the function it runs for each job.

Nothing here imports boto3, rq, redis or mlflow at module import time.
"""

from __future__ import annotations

from ..errors import GnomonError


class RemoteError(GnomonError):
    """A remote operation (S3, Redis, a bundle) failed; the message says what and where."""


class IntegrityError(RemoteError):
    """A bundle or manifest does not match its recorded sha256 or size, or is unsafe to extract."""


__all__ = ["RemoteError", "IntegrityError"]
