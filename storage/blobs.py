"""Content-addressed blob store for raw messages and attachments under ``data_dir``.

A blob is published the durable way: written to a temporary file in its final directory,
the file fsynced, renamed into place, and the directory fsynced, so once ``put`` returns the
bytes survive a power loss and a crash never leaves a half-written blob under its final
name. A directory created on the way is made durable in its parent the same way. Writing
the same bytes twice is a no-op (the second ``put`` only makes sure the first one's name is
durable).

``put`` takes the digest when the caller has already hashed the bytes (the ingest door
hashes once), and any bytes-like object, written without copying."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import threading
from pathlib import Path

from postdesk.workflow.rules.errors import UserError

Bytes = bytes | bytearray | memoryview

# The temporary name is unique among live writers (pid, thread, counter): one left by a
# writer that crashed is simply overwritten.
_O_TMP = (os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
          | getattr(os, "O_CLOEXEC", 0))
_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_counter = itertools.count()


def sha256_hex(data: Bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path | str) -> None:
    """Make the entries of directory ``path`` (a rename, a new file or subdirectory)
    durable."""
    fd = os.open(path, _O_DIR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobMissing(UserError):
    """A row names a blob whose file is gone (restored from an older backup, deleted by
    hand, a disk lost): said plainly, with the path, instead of a traceback."""

    def __init__(self, digest: str, path: Path):
        self.digest, self.path = digest, path
        super().__init__(f"blob {digest} is missing from the blob store (expected at {path})")


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def of_desk(cls, data_dir: Path | str) -> BlobStore:
        """The desk's store: ``blobs/`` under ``desk.data_dir``."""
        return cls(Path(data_dir) / "blobs")

    def path_for(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: Bytes, digest: str | None = None) -> str:
        """Store ``data`` durably; returns its SHA-256 hex digest. ``digest``, when given,
        must be ``sha256_hex(data)``: the bytes are then not hashed again."""
        if digest is None:
            digest = sha256_hex(data)
        path = self.path_for(digest)
        size = memoryview(data).nbytes
        try:
            existing = os.stat(path).st_size
        except FileNotFoundError:
            existing = -1
        if existing == size:
            # Published before, maybe by a writer that died between its rename and the
            # fsync of the directory: make the name durable before anyone relies on it.
            fsync_dir(path.parent)
            return digest
        self._publish(path, data)
        return digest

    def _publish(self, path: Path, data: Bytes) -> None:
        parent = path.parent
        tmp = parent / f".tmp-{os.getpid()}-{threading.get_ident()}-{next(_counter)}"
        new_dirs: list[Path] = []
        try:
            fd = os.open(tmp, _O_TMP, 0o600)
        except FileNotFoundError:
            new_dirs = self._make_dirs(parent)
            fd = os.open(tmp, _O_TMP, 0o600)
        try:
            try:
                view = memoryview(data).cast("B")
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # Every fsync is done before put returns; their order is chosen so a journalling
        # file system commits once for the file (taking the new directories along) and
        # once for the rename: the parents of new directories first, the blob's own
        # directory last.
        for directory in new_dirs:
            fsync_dir(directory.parent)
        fsync_dir(parent)

    def _make_dirs(self, directory: Path) -> list[Path]:
        """Create ``directory`` and any missing parent up to the root; returns the
        directories whose entry in their parent is still to be made durable (created here
        or, in a race, by another writer that may not have synced it yet)."""
        missing: list[Path] = []
        current = directory
        while not current.exists() and current != current.parent:
            missing.append(current)
            current = current.parent
        for new in reversed(missing):
            with contextlib.suppress(FileExistsError):   # another writer made it
                new.mkdir()
        return list(reversed(missing))

    def get(self, digest: str) -> bytes:
        path = self.path_for(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise BlobMissing(digest, path) from None

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).exists()
