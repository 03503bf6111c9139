"""Local files (paths and ``file://`` uris): read within the limits, never under /proc, /sys or
/dev, never blocking on a FIFO; the version signal is size and modification time."""

from __future__ import annotations

import functools
import os
import stat
from typing import BinaryIO

from aisthetics_transforms import storage
from aisthetics_transforms.fetch.guards import (
    BYTES_IN_FLIGHT,
    body_buffer,
    refuse_path,
)
from aisthetics_transforms.fetch.limits import (
    Deadline,
    Fetched,
    FetchError,
    FetchLimits,
    MiB,
    too_large,
)

_CHUNK = 1 * MiB


def file_uri_to_path(uri: str) -> str:
    try:
        return storage.os_path(uri)
    except ValueError as exc:
        raise FetchError("InvalidUri", str(exc)) from None


def file_version(info: os.stat_result) -> str:
    return f"size={info.st_size};mtime_ns={info.st_mtime_ns}"


def checked_stat(path: str, uri: str) -> os.stat_result:
    """The stat of a regular file that is not under /proc, /sys or /dev, else FetchError.
    Checked before opening: opening a FIFO blocks, opening a device may do something."""
    try:
        refuse_path(real_path(path), uri)
        info = os.stat(path)
    except OSError as exc:
        raise _os_error(uri, exc) from None
    except ValueError as exc:  # e.g. an embedded NUL byte in the path
        raise FetchError("InvalidUri", f"invalid local path {uri!r}: {exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise FetchError("IsADirectory", f"is a directory, not an image file: {uri}")
    if not stat.S_ISREG(info.st_mode):
        raise FetchError("NotAFile", f"not a regular file (device, FIFO or socket): {uri}")
    return info


def real_path(path: str) -> str:
    """``os.path.realpath(path)``, resolving each directory once: a catalog's files share a
    few directories, and resolving one costs a syscall per component of its path. (A
    directory swapped for a symlink mid-run is caught where it matters: a read checks the
    path of the file it opened.)"""
    try:
        simple = ".." not in path.split(os.sep) and not stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:  # missing: resolve what there is, so a path under /proc is still named as such
        simple = False
    if not simple:  # ".." after a symlink, a symlinked file: the slow way
        return os.path.realpath(path)
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(_real_directory(directory), name)


@functools.lru_cache(maxsize=4096)
def _real_directory(directory: str) -> str:
    return os.path.realpath(directory)


def fetch_local_file(path: str, uri: str, limits: FetchLimits) -> Fetched:
    deadline = Deadline(limits.deadline)
    info = checked_stat(path, uri)
    if info.st_size > limits.max_bytes:
        raise too_large(uri, limits, f"file size {info.st_size} bytes")
    try:
        # O_NONBLOCK: a FIFO swapped in since the stat does not block the open.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            opened = os.fstat(f.fileno())
            # What was opened, not what the path named a moment ago: a symlink swapped
            # in since the check is caught here.
            refuse_path(_opened_path(f.fileno(), path), uri)
            if not stat.S_ISREG(opened.st_mode):
                raise FetchError("NotAFile", f"not a regular file (device, FIFO or socket): {uri}")
            if opened.st_size > limits.max_bytes:  # replaced (renamed over) since the stat
                raise too_large(uri, limits, f"file size {opened.st_size} bytes")
            with BYTES_IN_FLIGHT.reserve(opened.st_size, limits.max_bytes_in_flight, deadline, uri):
                data = _read_file(f, uri, limits, deadline, opened.st_size)
            return Fetched(data, file_version(opened), None)
    except FetchError:
        raise
    except OSError as exc:
        raise _os_error(uri, exc) from None


def _opened_path(fd: int, path: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (not Linux): the check before opening stands alone
        return os.path.realpath(path)


def _read_file(f: BinaryIO, uri: str, limits: FetchLimits, deadline: Deadline, size: int) -> bytes:
    # Ask for one byte more than the stat said: that notices a file that grew since.
    with body_buffer(size) as buffer:
        total = 0
        while total <= size:
            if deadline.expired():
                raise deadline.exceeded(uri, f"after reading {total} bytes")
            chunk = f.read(min(_CHUNK, size + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > size:
                raise FetchError("ChangedDuringRun", f"{uri} grew past its size of {size} bytes while it was read")
            buffer.write(chunk)
        return buffer.take()


def _os_error(uri: str, exc: OSError) -> FetchError:
    if isinstance(exc, FileNotFoundError):
        return FetchError("NotFound", f"no such file: {uri}")
    if isinstance(exc, IsADirectoryError):
        return FetchError("IsADirectory", f"is a directory, not an image file: {uri}")
    if isinstance(exc, PermissionError):
        return FetchError("PermissionDenied", f"permission denied reading {uri}")
    if isinstance(exc, NotADirectoryError):
        return FetchError("NotFound", f"no such file (a parent is not a directory): {uri}")
    return FetchError("ReadFailed", f"could not read {uri}: {exc.strerror or exc}")
