"""One night per date, decided at launch: the claim a run takes on its ``--run_date``.

Before a run builds anything, it creates ``DIR/_publish/DATE.claim.json`` naming itself
(run id, host, process, when taken, until when), atomically: with ``O_EXCL`` (a hard
link of a complete file) on local disk, with ``ifGenerationMatch=0`` on GCS. A second run
of the date then refuses at once, in one line naming the holder and when its claim
expires, instead of paying for a whole night and failing at publish.

A claim lasts ``ttl_s`` from its last renewal: the launcher renews it every ``ttl_s / 4``
while it runs or waits for its job. A launcher that leaves its job running (a Dataflow job
it does not wait for) writes a claim that lasts ``hold_s`` instead. The publish step
releases it (``publish.publish_night`` first checks that no other run holds it). A claim
past its expiry, or left on this host by a process that is gone, is taken over: on GCS
with ``ifGenerationMatch`` of the claim that was read, on local disk under a lock on the
output directory, so two runs taking over at once cannot both win. Other remote stores
(Beam's FileSystems) have no atomic create: there the claim is checked, then written.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Iterator, NamedTuple, Optional

from aisthetics_transforms import layout, storage

_log = logging.getLogger(__name__)


class DateClaimed(RuntimeError):
    """Another run holds the date: the message names it and when its claim expires."""


class Claim(NamedTuple):
    run_id: str
    host: str
    pid: int
    process_start: Optional[str]  # the process's start time on its host (pid reuse tells apart)
    taken_at: str
    expires_at: str  # ISO 8601, UTC

    def expired(self, now: datetime) -> bool:
        return datetime.fromisoformat(self.expires_at) <= now

    def process_gone(self) -> bool:
        """Whether the claiming process is known dead: on this host, its pid gone or reused."""
        if self.host != socket.gethostname():
            return False
        return _process_start(self.pid) != self.process_start

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, process {self.pid}, since {self.taken_at})"


def claim_path(output: str, run_date: str) -> str:
    return layout.join(output, layout.PUBLISH, f"{run_date}.claim.json")


def _process_start(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None if not _pid_alive(pid) else "alive"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class NightClaim:
    """This run's claim on its date (see the module doc)."""

    def __init__(self, output: str, run_date: str, run_id: str, ttl_s: float, hold_s: Optional[float] = None):
        self.output, self.run_date, self.run_id = output, run_date, run_id
        self.path = claim_path(output, run_date)
        self.ttl_s, self.hold_s = ttl_s, hold_s
        self._generation: Optional[int] = None  # GCS: of our last write
        self._stop = threading.Event()
        self._renewing: Optional[threading.Thread] = None

    # --- taking it -----------------------------------------------------------------------

    def take(self) -> None:
        """Claim the date, or raise :class:`DateClaimed` naming the holder."""
        for _ in range(3):  # a claim released or expired between our looks: look again
            if self._create():
                return
            held = read_claim(self.output, self.run_date)
            if held is None:
                continue
            if held.run_id == self.run_id:  # a retry of this run's own launch
                return
            if not (held.expired(_now()) or held.process_gone()):
                raise DateClaimed(
                    f"{self.run_date} is being run by {held.describe()} under {self.output}: its claim "
                    f"({self.path}) expires at {held.expires_at} unless renewed; rerun after it ends, or delete "
                    "the claim if that run is dead"
                )
            if self._take_over(held):
                _log.warning(
                    "aisthetics: took over the claim on %s of %s, expired or dead", self.run_date, held.describe()
                )
                return
        raise DateClaimed(f"{self.run_date}: its claim ({self.path}) keeps changing hands; rerun in a minute")

    def _document(self) -> bytes:
        now = _now()
        life = self.hold_s if self.hold_s is not None else self.ttl_s
        claim = Claim(
            self.run_id,
            socket.gethostname(),
            os.getpid(),
            _process_start(os.getpid()),
            now.isoformat(),
            (now + timedelta(seconds=life)).isoformat(),
        )
        return json.dumps(claim._asdict(), indent=1).encode() + b"\n"

    def _create(self) -> bool:
        """Create the claim unless one exists; True when this call did."""
        data = self._document()
        if storage.is_local(self.path):
            with _output_locked(self.output):
                return _create_local(self.path, data)
        if self.path.startswith("gs://"):
            from google.api_core.exceptions import PreconditionFailed

            blob = storage.gcs_blob(self.path)
            try:
                blob.upload_from_string(data, content_type="application/json", if_generation_match=0)
            except PreconditionFailed:
                return False
            self._generation = blob.generation
            return True
        if storage.read_bytes(self.path) is not None:  # no atomic create on this store: check, then write
            return False
        storage.write_atomic(self.path, data, "application/json")
        return True

    def _take_over(self, held: Claim) -> bool:
        """Replace ``held`` (expired, or its process gone) with ours, unless it changed meanwhile."""
        data = self._document()
        if storage.is_local(self.path):
            with _output_locked(self.output):
                if read_claim(self.output, self.run_date) != held:
                    return False
                storage.write_atomic(self.path, data, "application/json")
                return True
        if self.path.startswith("gs://"):
            from google.api_core.exceptions import NotFound, PreconditionFailed

            blob = storage.gcs_blob(self.path)
            try:
                blob.reload()
                if read_claim(self.output, self.run_date) != held:
                    return False
                blob.upload_from_string(data, content_type="application/json", if_generation_match=blob.generation)
            except (PreconditionFailed, NotFound):
                return False
            self._generation = blob.generation
            return True
        storage.write_atomic(self.path, data, "application/json")
        return True

    # --- keeping it ----------------------------------------------------------------------

    def keep(self) -> NightClaim:
        """Renew the claim every ``ttl_s / 4`` until :meth:`stop_keeping` or :meth:`release`."""
        self._stop.clear()
        self._renewing = threading.Thread(target=self._renew_loop, name="aisthetics-night-claim", daemon=True)
        self._renewing.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if not self.renew():
                    _log.warning("aisthetics: the claim on %s is no longer this run's (%s)", self.run_date, self.path)
                    return
            except Exception as exc:  # a missed renewal is survivable; the next one may work
                _log.warning("aisthetics: renewing the claim on %s failed: %s", self.run_date, exc)

    def renew(self) -> bool:
        """Push the expiry on; False when the claim is not this run's any more (another run's,
        or released: the night is published)."""
        if not self.held():
            return False
        data = self._document()
        if self.path.startswith("gs://"):
            from google.api_core.exceptions import PreconditionFailed

            blob = storage.gcs_blob(self.path)
            try:
                blob.upload_from_string(
                    data, content_type="application/json", if_generation_match=self._generation or None
                )
            except PreconditionFailed:
                return False
            self._generation = blob.generation
            return True
        if storage.is_local(self.path):
            with _output_locked(self.output):
                if not self.held():
                    return False
                storage.write_atomic(self.path, data, "application/json")
            return True
        storage.write_atomic(self.path, data, "application/json")
        return True

    def stop_keeping(self) -> None:
        self._stop.set()
        if self._renewing is not None:
            self._renewing.join()
            self._renewing = None

    def held(self) -> bool:
        """Whether the date's claim is this run's."""
        held = read_claim(self.output, self.run_date)
        return held is not None and held.run_id == self.run_id

    def release(self) -> None:
        """Stop renewing and remove the claim if it is still this run's."""
        self.stop_keeping()
        release_claim(self.output, self.run_date, self.run_id)


def read_claim(output: str, run_date: str) -> Optional[Claim]:
    data = storage.read_bytes(claim_path(output, run_date))
    if not data:
        return None
    try:
        return Claim(**json.loads(data))
    except (ValueError, TypeError):  # not ours, or cut short: a claim of nobody, expired
        return Claim("?", "?", 0, None, "?", datetime.fromtimestamp(0, UTC).isoformat())


def release_claim(output: str, run_date: str, run_id: str) -> None:
    """Remove the date's claim if ``run_id`` holds it (the publish step's last act)."""
    held = read_claim(output, run_date)
    if held is not None and held.run_id == run_id:
        storage.delete([claim_path(output, run_date)])
        storage.remove_empty_dirs(layout.join(output, layout.PUBLISH))


def _now() -> datetime:
    return datetime.now(UTC)


def _create_local(path: str, data: bytes) -> bool:
    """``data`` at ``path`` unless a file is there: a complete temporary file hard-linked to
    the name (the link fails if the name exists), so a reader never sees half a claim."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{time.monotonic_ns()}")
    with open(temporary, "wb") as f:
        f.write(data)
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(temporary)


@contextmanager
def _output_locked(output: str) -> Iterator[None]:
    """An exclusive lock on the output directory for the claim's check-and-write, between
    processes of this machine (flock on the directory itself: no file left behind)."""
    os.makedirs(output, exist_ok=True)
    fd = os.open(output, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
