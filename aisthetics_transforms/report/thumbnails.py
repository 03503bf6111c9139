"""Thumbnails of the images the page shows, as ``data:`` URIs.

They are fetched with the pipeline's own fetcher (local files, gs://, http) under small
limits, by a few threads, within one time budget for them all. An image that cannot be
fetched or decoded becomes a placeholder naming why; the report never fails for one.
"""

from __future__ import annotations

import base64
import io
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import replace

from aisthetics_transforms.fetch import FetchError, FetchLimits, ThreadSessions, fetch_bytes
from aisthetics_transforms.preprocess import ImageDecodeError, open_image
from aisthetics_transforms.report.data import Thumbnail

THUMB_SIZE = (320, 240)  # pixels stored; shown at half that for sharp screens
THUMB_WORKERS = 8
THUMB_BUDGET_S = 30.0  # all thumbnails together; later ones become placeholders


def thumbnail_limits() -> FetchLimits:
    return FetchLimits(
        max_bytes=20 * 1024 * 1024,
        connect_timeout=3.0,
        read_timeout=5.0,
        deadline=10.0,
        retries=1,
        backoff=0.2,
        max_backoff=1.0,
        max_redirects=3,
    )


def make_thumbnail(data: bytes, size: tuple[int, int] = THUMB_SIZE) -> str:
    """Image bytes -> a ``data:image/jpeg`` URI of ``size``, centre-cropped. Refuses
    decompression bombs by their header (the pipeline's limits) before decoding."""
    from PIL import Image, ImageOps

    image = open_image(data)
    image.draft("RGB", (size[0] * 2, size[1] * 2))  # JPEG: decode at a reduced scale
    image = ImageOps.exif_transpose(image)  # people expect photos upright
    image = ImageOps.fit(image.convert("RGB"), size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=78, optimize=True, progressive=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def one_thumbnail(uri: str, limits: FetchLimits, session) -> Thumbnail:
    try:
        return Thumbnail(make_thumbnail(fetch_bytes(uri, limits, session)))
    except (FetchError, ImageDecodeError) as exc:
        return Thumbnail(problem=exc.error_type)
    except Exception as exc:  # a truncated or strange file: a placeholder, never a failed report
        return Thumbnail(problem=type(exc).__name__)


def fetch_thumbnails(
    uris: Iterable[str],
    limits: FetchLimits | None = None,
    workers: int = THUMB_WORKERS,
    budget_s: float = THUMB_BUDGET_S,
) -> dict[str, Thumbnail]:
    """{uri: Thumbnail} for each distinct uri, fetched by ``workers`` threads. Whatever is
    not done after ``budget_s`` seconds becomes a ``Timeout`` placeholder.

    No fetch outlives the budget (each one's deadline is cut to what is left of it), and
    the threads are daemons: a pool's threads would be joined at interpreter exit, so a
    thread stuck on a slow read would hold the command up past its budget."""
    uris = list(dict.fromkeys(u for u in uris if u))
    if not uris:
        return {}
    limits = limits or thumbnail_limits()
    ends = time.monotonic() + budget_s
    found = {u: Thumbnail(problem="Timeout") for u in uris}
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for uri in uris:
        todo.put(uri)
    changed = threading.Condition()
    finished = []
    sessions = ThreadSessions(limits)

    def work():
        session = sessions.get()
        while True:
            left = ends - time.monotonic()
            try:
                uri = todo.get_nowait()
            except queue.Empty:
                return
            if left <= 0:
                return
            thumbnail = one_thumbnail(uri, replace(limits, deadline=min(limits.deadline, left)), session)
            with changed:
                found[uri] = thumbnail
                finished.append(uri)
                changed.notify()

    for _ in range(min(workers, len(uris))):
        threading.Thread(target=work, name="thumb", daemon=True).start()
    with changed:
        changed.wait_for(lambda: len(finished) == len(uris), timeout=budget_s)
        result = dict(found)
    sessions.close()
    return result
