"""Content-addressed artifact files: stored by sha256, verified on every read.

A model file is code (pickle). Shipway only loads bytes whose sha256 matches the digest the
registry recorded when the model was added, so a file swapped on disk is refused, not run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from shipway.errors import ArtifactIntegrityError, NotFound

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest

    def put_file(self, src: str | Path) -> tuple[str, int]:
        """Copy a file in; return (sha256, size). Storing the same bytes twice is a no-op."""
        digest = sha256_file(src)
        dest = self.path_for(digest)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".incoming-")
            os.close(fd)
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        return digest, dest.stat().st_size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        dest = self.path_for(digest)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".incoming-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        return digest, len(data)

    def read_verified(self, digest: str) -> bytes:
        """The artifact's bytes, after checking they still hash to ``digest``."""
        path = self.path_for(digest)
        if not path.exists():
            raise NotFound(f"artifact sha256:{digest} is not in the artifact store at {self.root}")
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ArtifactIntegrityError(
                f"artifact {path} hashes to sha256:{actual}, not the registered sha256:{digest}; "
                "refusing to load it"
            )
        return data


__all__ = ["ArtifactStore", "sha256_file"]
