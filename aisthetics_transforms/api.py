"""The one-line API of the seed's 2.0.0 example, batched internally.

nima = aisthetics_transforms.get_aisthetics_model()
nima.predict(images='/path/a.jpg', augmented=True)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence

import numpy as np

from aisthetics_transforms.model import DEFAULT_BATCH_SIZE, DEFAULT_ENGINE, LoadedModel, distribution_stats, load_model
from aisthetics_transforms.preprocess import (
    DEFAULT_LIMITS,
    DecodeLimits,
    ImageDecodeError,
    decode_image,
    to_model_input,
)


class ImageScoringError(ValueError):
    """An image given to ``predict`` could not be read or decoded."""


def read_and_decode(path: str, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A local image file -> (224, 224, 3) uint8; errors name the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        return decode_image(data, limits)
    except (OSError, ImageDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImageScoringError(f"{path}: {detail}") from None


class AestheticsModel:
    """NIMA with a loaded engine. Decoding of the next batch overlaps inference of this one."""

    def __init__(self, model: LoadedModel, batch_size: int = DEFAULT_BATCH_SIZE, limits: DecodeLimits = DEFAULT_LIMITS):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model
        self.batch_size = batch_size
        self.limits = limits

    @property
    def model_version(self) -> str:
        return self.model.model_version

    def _batches(self, paths: Sequence[str]) -> Iterator[list[tuple[str, np.ndarray | ImageScoringError]]]:
        def load(path):
            try:
                return path, read_and_decode(path, self.limits)
            except ImageScoringError as exc:
                return path, exc

        chunks = iter([paths[i : i + self.batch_size] for i in range(0, len(paths), self.batch_size)])
        pool = ThreadPoolExecutor(max_workers=1)

        def read_next():
            chunk = next(chunks, None)
            return None if chunk is None else pool.submit(lambda: [load(p) for p in chunk])

        try:
            pending = read_next()
            while pending is not None:
                current = pending.result()
                pending = read_next()
                yield current
        finally:
            # Not ``with``: on an exception (Ctrl-C) it would wait for a read that may never end.
            pool.shutdown(wait=False, cancel_futures=True)

    def score(self, images: str | Iterable[str]) -> list[dict]:
        """Seed-shaped result dicts; an image that fails gets ``{"image", "error"}`` instead."""
        paths = [os.fspath(images)] if isinstance(images, (str, os.PathLike)) else [os.fspath(p) for p in images]
        results: list[dict] = []
        for batch in self._batches(paths):
            good = [(p, px) for p, px in batch if isinstance(px, np.ndarray)]
            distributions = iter(self.model.predict(to_model_input([px for _, px in good]))) if good else iter(())
            for path, pixels in batch:
                if not isinstance(pixels, np.ndarray):
                    results.append({"image": path, "error": str(pixels)})
                    continue
                p = next(distributions)
                mean, sd = distribution_stats(p)
                results.append(
                    {
                        "image": path,
                        "predictions": [float(v) for v in p],
                        "mean_score_prediction": mean,
                        "sd_score_prediction": sd,
                    }
                )
        return results

    def predict(self, images: str | Iterable[str], augmented: bool = False) -> list:
        """As the seed: a list of 10-element arrays, or of dicts with mean and sd when
        ``augmented``. Raises :class:`ImageScoringError` naming the first bad image."""
        results = self.score(images)
        for r in results:
            if "error" in r:
                raise ImageScoringError(r["error"])
        if augmented:
            return results
        return [np.asarray(r["predictions"], dtype=np.float32) for r in results]


def get_aisthetics_model(
    engine: str = DEFAULT_ENGINE,
    weights: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_threads: int | None = None,
) -> AestheticsModel:
    """NIMA ready to score. ``engine``: 'auto' (= 'litert'), 'litert' or 'keras';
    ``weights``: None for the seed's weights, or a NIMA HDF5 path (local or gs://)."""
    return AestheticsModel(load_model(engine, weights, num_threads), batch_size=batch_size)
