"""Crash-safe file writes: a file appears complete or not at all.

On Linux the bytes go to an unnamed file (``O_TMPFILE``) on the target's file system (in
the nearest folder on the target's path that exists), are fsynced, and only then is the
target's folder created and the file linked under its name. A process killed at any point
before the link (even by SIGKILL, which no handler sees) leaves nothing behind, not even a
folder: the kernel frees an unnamed file with its last descriptor. Where ``O_TMPFILE`` or
``/proc/self/fd`` is missing, a named temporary file is used instead; a Python exception
(Ctrl-C included) removes it, but a SIGKILL during the write leaves that hidden
``.vdmc.*.tmp`` file behind.

An existing target is replaced by a rename, so a reader sees the old file or the new one.
The one window that can leave a complete hidden ``.NAME.*.tmp`` file is the pair of
syscalls (link, rename) of such a replacement.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

STAGE_BATCH = 64  # unnamed files held open at once by write_files


class _Staged:
    """Bytes written to an unnamed file in ``folder`` (or to a named temporary file); its
    target must be on the same file system."""

    def __init__(self, folder: Path, data: bytes, unnamed: bool = True):
        self.folder, self.data, self.fd, self.tmp = folder, data, -1, None
        flags = getattr(os, "O_TMPFILE", 0)
        if unnamed and flags and Path("/proc/self/fd").is_dir():
            try:
                self.fd = os.open(folder, flags | os.O_WRONLY, 0o666)
            except OSError:  # the file system does not support it
                self.fd = -1
        if self.fd < 0:
            self.fd, tmp = tempfile.mkstemp(dir=folder, prefix=".vdmc.", suffix=".tmp")
            self.tmp = Path(tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
        except BaseException:
            self.discard()
            raise

    def commit(self, path: Path) -> None:
        """Give the staged bytes the name ``path`` (whose folder must exist)."""
        try:
            if self.tmp is None:
                proc = f"/proc/self/fd/{self.fd}"
                dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    try:  # a new name: one atomic link
                        os.link(proc, path.name, dst_dir_fd=dirfd, follow_symlinks=True)
                    except FileExistsError:  # a replacement: link beside it, then rename over it
                        tmp = f".{path.name}.{os.urandom(6).hex()}.tmp"
                        os.link(proc, tmp, dst_dir_fd=dirfd, follow_symlinks=True)
                        try:
                            os.replace(tmp, path.name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
                        except BaseException:
                            os.unlink(tmp, dir_fd=dirfd)
                            raise
                    except OSError:  # /proc links refused here: write a named temporary file instead
                        _Staged(path.parent, self.data, unnamed=False).commit(path)
                    os.fsync(dirfd)
                finally:
                    os.close(dirfd)
            else:
                os.replace(self.tmp, path)
                self.tmp = None
        finally:
            self.discard()

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None


def _naming(path: Path, e: OSError) -> OSError:
    """``e`` as it concerns ``path``: an error on a temporary file or a /proc link names the
    target instead (the user never sees those names)."""
    name = str(e.filename or "")
    if name and (Path(name).name.startswith(".") and name.endswith(".tmp") or name.startswith("/proc/self/fd/")):
        return type(e)(e.errno, e.strerror, str(path))
    return e


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (creating its folder): afterwards the file is complete;
    if the process dies before, ``path`` is untouched and (on Linux) nothing else is left."""
    path = Path(path)
    try:
        staged = _Staged(_existing(path.parent), data)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.commit(path)
        finally:
            staged.discard()
    except OSError as e:
        raise _naming(path, e) from None


def write_files(items: Sequence[tuple[Path, bytes]]) -> None:
    """Write several files, each atomically, all staged before any appears.

    The bytes of up to ``STAGE_BATCH`` files are written and fsynced as unnamed files,
    then their folders are created and they are linked in one after the other (a metadata
    operation each), so a kill during the writing leaves none of them; a kill during the
    linking leaves some of them, each complete. On any Python exception (Ctrl-C included)
    the files linked so far and the folders created for them are removed again."""
    done: list[Path] = []
    made: list[Path] = []
    try:
        for start in range(0, len(items), STAGE_BATCH):
            staged: list[tuple[Path, _Staged]] = []
            try:
                for path, data in items[start : start + STAGE_BATCH]:
                    path = Path(path)
                    try:
                        staged.append((path, _Staged(_existing(path.parent), data)))
                    except OSError as e:
                        raise _naming(path, e) from None
                for path, s in staged:
                    try:
                        made += _mkdirs(path.parent)
                        s.commit(path)
                    except OSError as e:
                        raise _naming(path, e) from None
                    done.append(path)
            finally:
                for _, s in staged:
                    s.discard()
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass
        raise


def _existing(folder: Path) -> Path:
    """The nearest folder on ``folder``'s path that exists (on the same file system as any
    part of ``folder`` still to be created)."""
    p = Path(folder).absolute()
    while not p.is_dir():
        if p.exists() or p.parent == p:
            raise NotADirectoryError(20, "Not a directory", str(p))
        p = p.parent
    return p


def _mkdirs(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; return the ones created, outermost first."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))
