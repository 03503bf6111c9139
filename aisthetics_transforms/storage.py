"""The few file operations publishing and reading need, on local paths and ``gs://`` (any
Beam filesystem) alike: list, read, write atomically, create if absent, move, delete. Beam is
imported only for remote paths, so local readers such as the report start quickly. Where a
night's files live is ``layout``'s."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from typing import NamedTuple, Optional, Sequence
from urllib.parse import unquote, urlsplit

_GCS_BATCH = 100  # objects per GCS batch request (the API's limit)


class Entry(NamedTuple):
    path: str
    name: str  # relative to the directory listed
    updated: float  # seconds since the epoch of the last write (creation for files never rewritten)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: str) -> str:
    """The scheme of a path or uri, lowercase (``gs``, ``https``, ``file``); ``""`` for a plain path."""
    match = _SCHEME.match(path)
    return match.group(1).lower() if match else ""


def is_local(path: str) -> bool:
    """On this machine's disk: a plain path or a ``file://`` uri (not ``gs://`` or another
    store Beam's filesystems reach)."""
    return scheme(path) in ("", "file")


def os_path(path: str) -> str:
    """A local path as the operating system takes it: a ``file://`` uri's path (decoded);
    anything else unchanged. ValueError for a ``file://`` uri naming another host."""
    if scheme(path) != "file":
        return path
    parts = urlsplit(path)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file uri names host {parts.netloc!r}; only local files can be read: {path}")
    if not parts.path:
        raise ValueError(f"file uri has no path: {path}")
    return unquote(parts.path)


def shown(path: str) -> str:
    """``path`` as a message names it: absolute when local, so it opens from anywhere."""
    return os.path.abspath(os_path(path)) if is_local(path) else path


_per_thread = threading.local()


def _gcs():
    """One Beam GcsIO (a google-cloud-storage client with Beam's credentials, retries and
    emulator support) per thread and endpoint: Beam's FileSystems builds a new one, parsing
    options and making a client, for every call. The client takes its endpoint from the
    environment when it is made, so a different ``STORAGE_EMULATOR_HOST`` gets another."""
    endpoint = os.environ.get("STORAGE_EMULATOR_HOST")
    cached = getattr(_per_thread, "gcs", None)
    if cached is None or cached[0] != endpoint:
        from apache_beam.io.gcp.gcsio import GcsIO

        cached = _per_thread.gcs = (endpoint, GcsIO())
    return cached[1]


def gcs_blob(path: str):
    """The google-cloud-storage blob of a ``gs://`` path (for preconditions: night_claim)."""
    bucket, _, name = path[len("gs://") :].partition("/")
    return _gcs().client.bucket(bucket).blob(name)


def _filesystems():  # other remote schemes: Beam's FileSystems
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def list_prefix(prefix: str) -> list[Entry]:
    """Every object whose path starts with ``prefix``, in one (paged) listing."""
    if prefix.startswith("gs://"):
        return [Entry(path, path, updated) for path, (_, updated) in _gcs().list_files(prefix, with_metadata=True)]
    return [
        Entry(m.path, m.path, m.last_updated_in_seconds or 0.0)
        for m in _filesystems().match([prefix + "**"])[0].metadata_list
    ]


def list_dir(directory: str) -> list[Entry]:
    """The files directly in ``directory`` (none when it does not exist), in one listing."""
    return [e for e in list_tree(directory) if "/" not in e.name]


def list_tree(directory: str) -> list[Entry]:
    """Every file below ``directory``, named relative to it."""
    directory = directory.rstrip("/")
    if not is_local(directory):
        return sorted(e._replace(name=e.path[len(directory) + 1 :]) for e in list_prefix(directory + "/"))
    directory = os_path(directory)
    found = []
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            try:
                found.append(Entry(path, os.path.relpath(path, directory), os.stat(path).st_mtime))
            except FileNotFoundError:
                pass  # removed while listing
    return sorted(found)


def read_bytes(path: str) -> Optional[bytes]:
    """The contents of ``path``, or None when there is no such file."""
    if is_local(path):
        path = os_path(path)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
    if path.startswith("gs://"):
        from google.api_core.exceptions import NotFound

        try:
            return gcs_blob(path).download_as_bytes()
        except NotFound:
            return None
    if not _filesystems().exists(path):
        return None
    with _filesystems().open(path) as f:
        return f.read()


def exists(path: str) -> bool:
    if is_local(path):
        path = os_path(path)
        return os.path.exists(path)
    return gcs_blob(path).exists() if path.startswith("gs://") else _filesystems().exists(path)


def write_atomic(path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
    """Readers see the old file or the whole new one: a temporary file in the same directory
    renamed over it locally; one object upload (atomic in GCS) remotely."""
    if is_local(path):
        path = os_path(path)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "wb", dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp", delete=False
        ) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(f.name, 0o644)
        os.replace(f.name, path)
    elif path.startswith("gs://"):
        gcs_blob(path).upload_from_string(data, content_type=mime_type)
    else:
        with _filesystems().create(path, mime_type=mime_type) as f:
            f.write(data)


def create_if_absent(path: str) -> bool:
    """Create an empty file at ``path`` unless one is there; True when this call created it.
    Locally this is atomic (O_EXCL). GCS offers that only through preconditions, which the
    design must not need; a remote check-then-write races only with a concurrent attempt of
    the same run, which would write the same name."""
    if is_local(path):
        path = os_path(path)
        for _ in range(2):  # the directory may be removed by a publish that just ended
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:
                continue
        raise FileNotFoundError(f"could not create {path}: its directory keeps disappearing")
    if _gcs().exists(path) if path.startswith("gs://") else _filesystems().exists(path):
        return False
    write_atomic(path, b"")
    return True


def touch(path: str) -> None:
    """Set ``path``'s modification time to now, creating it empty if needed (no temporary
    file: a process killed here leaves nothing else behind)."""
    if is_local(path):
        path = os_path(path)
        with open(path, "ab"):
            pass
        os.utime(path)
    else:
        write_atomic(path, b"")


def _gcs_failures(results) -> None:
    failed = [r for r in results if r[-1]]
    if failed:
        raise OSError(f"{len(failed)} GCS operations failed, e.g. {failed[0]}")


def move(pairs: Sequence[tuple[str, str]]) -> None:
    """Move each (source, destination) file, replacing the destination: an atomic rename
    locally; a copy then a delete remotely, batched."""
    if not pairs:
        return
    if is_local(pairs[0][0]):
        for source, destination in ((os_path(s), os_path(d)) for s, d in pairs):
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            os.replace(source, destination)
    elif pairs[0][0].startswith("gs://"):
        for start in range(0, len(pairs), _GCS_BATCH):
            _gcs_failures(_gcs().copy_batch(list(pairs[start : start + _GCS_BATCH])))
        delete([source for source, _ in pairs])
    else:
        _filesystems().rename([s for s, _ in pairs], [d for _, d in pairs])


def delete(paths: Sequence[str]) -> None:
    """Delete files; one already gone is not an error (another attempt deleted it)."""
    paths = list(paths)
    if not paths:
        return
    if is_local(paths[0]):
        for path in paths:
            try:
                os.remove(os_path(path))
            except FileNotFoundError:
                pass
    elif paths[0].startswith("gs://"):
        for start in range(0, len(paths), _GCS_BATCH):  # GcsIO's batches treat 404 as done
            _gcs_failures(_gcs().delete_batch(paths[start : start + _GCS_BATCH]))
    else:
        _filesystems().delete(paths)


def _ignore_missing(function, path, exc_info) -> None:
    if not issubclass(exc_info[0], FileNotFoundError):  # gone already: another cleanup got there first
        raise exc_info[1]


def remove_tree(directory: str) -> None:
    """Delete ``directory`` and everything below it."""
    if is_local(directory):
        shutil.rmtree(os_path(directory), onerror=_ignore_missing)
        return
    delete([e.path for e in list_tree(directory)])


def remove_empty_dirs(*directories: str) -> None:
    """Remove each local directory that is empty, in order (inner ones first); remote
    stores have no directories to remove."""
    for directory in directories:
        if is_local(directory):
            try:
                os.rmdir(os_path(directory))
            except OSError:
                pass  # not empty (another run is using it) or already gone
