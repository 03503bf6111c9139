"""Score stage: batches of DecodedImage -> tables of score rows, with one model per worker process.

The model is loaded in ``setup()`` through ``apache_beam.utils.shared.Shared``: every
DoFn instance (Beam makes one per thread, and may call ``setup`` again) in a process
gets the same loaded model, so the weights are read and the interpreter built once per
worker process. The ``model_loads`` counter records each real load.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timezone
from typing import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils import shared

from aisthetics_transforms.bundles import OrderedPool, in_global_window
from aisthetics_transforms.model import LoadedModel, distribution_stats, load_model
from aisthetics_transforms.preprocess import to_model_input
from aisthetics_transforms.records import ERRORS, DecodedImage, error_row, score_row, score_table


def score_rows(images: Sequence[DecodedImage], distributions: np.ndarray, model_version: str, scored_at: datetime):
    """One scores-table row per manifest row: every member of each image gets its score."""
    for image, p in zip(images, distributions):
        mean, sd = distribution_stats(p)
        predictions = [float(v) for v in p]
        for member in image.members:
            yield score_row(
                member, image.content_sha256, predictions, mean, sd, model_version, scored_at, False, image.exif_orientation
            )


class ProgressLine:
    """Prints this process's scoring count and rate to stderr every ``interval`` seconds."""

    def __init__(self, interval: float):
        self.interval = interval
        self.count = 0
        self.started = self.last_time = time.monotonic()
        self.last_count = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        if self.interval <= 0:
            return
        with self.lock:
            self.count += n
            now = time.monotonic()
            if now - self.last_time < self.interval:
                return
            recent = (self.count - self.last_count) / (now - self.last_time)
            overall = self.count / (now - self.started)
            self.last_time, self.last_count = now, self.count
        # One write per line: worker processes share the terminal.
        sys.stderr.write(
            f"aisthetics worker {os.getpid()}: {self.count} images scored, "
            f"{recent:.1f} img/s now, {overall:.1f} img/s since its first batch\n"
        )
        sys.stderr.flush()


class _ProcessModel:
    """The per-process model, its progress line, and whether its load has been counted yet.

    Metrics can only be updated inside ``process``, not in ``setup``, hence the flag.
    """

    def __init__(self, model: LoadedModel, progress_seconds: float):
        self.model = model
        self.progress = ProgressLine(progress_seconds)
        self.load_uncounted = True
        self.lock = threading.Lock()


def _infer(model: LoadedModel, batch: Sequence[DecodedImage]) -> tuple[np.ndarray, datetime]:
    distributions = model.predict(to_model_input([image.pixels for image in batch]))
    return distributions, datetime.now(timezone.utc)


class ScoreBatches(beam.DoFn):
    """Batches of DecodedImage -> a table of score rows per batch; a batch the model
    rejects becomes error rows (stage ``score``) rather than failing the run.

    Inference runs one batch behind, on a thread of its own: while LiteRT (which releases
    the GIL) scores batch N, the stage goes on decoding batch N+1, whose ``process`` call
    then emits the rows of batch N. ``finish_bundle`` emits the last batch's rows.
    """

    def __init__(
        self, engine: str, weights: str | None, num_threads: int | None, progress_seconds: float = 0, keep_columns=()
    ):
        self.engine = engine
        self.keep_columns = tuple(keep_columns)
        self.weights = weights
        self.num_threads = num_threads
        self.progress_seconds = progress_seconds
        self._shared = shared.Shared()
        self.scored = Metrics.counter("aisthetics", "scored")
        self.deduplicated = Metrics.counter("aisthetics", "deduplicated")
        self.errors = Metrics.counter("aisthetics", "score_errors")
        self.model_loads = Metrics.counter("aisthetics", "model_loads")

    def setup(self):
        def load():
            return _ProcessModel(load_model(self.engine, self.weights, self.num_threads), self.progress_seconds)

        self._process_model = self._shared.acquire(load, tag=(self.engine, self.weights, self.num_threads))
        # One inference thread, at most one batch in flight beyond the one being collected.
        self._inference = OrderedPool(1, 1, "aisthetics-inference")

    def teardown(self):
        self._inference.shutdown()

    def start_bundle(self):
        self._inference.start()

    def process(self, batch: Sequence[DecodedImage]):
        held = self._process_model
        if held.load_uncounted:
            with held.lock:
                if held.load_uncounted:
                    held.load_uncounted = False
                    self.model_loads.inc()
        for done in self._inference.submit(batch, _infer, held.model, batch):
            yield from self._rows(*done)

    def finish_bundle(self):
        for done in self._inference.drain():
            yield from in_global_window(self._rows(*done))

    def _rows(self, batch: Sequence[DecodedImage], inference: Future):
        held = self._process_model
        try:
            distributions, scored_at = inference.result()
        except Exception as exc:  # e.g. an engine fault: report these images, keep the run
            for image in batch:
                yield from self._fail(image, type(exc).__name__, str(exc))
            return
        finite = np.isfinite(distributions).all(axis=1)
        good = [image for image, ok in zip(batch, finite) if ok]
        for image in (image for image, ok in zip(batch, finite) if not ok):
            yield from self._fail(image, "InvalidPrediction", "model output is not finite")
        self.scored.inc(len(good))
        self.deduplicated.inc(sum(len(image.members) - 1 for image in good))
        held.progress.add(len(good))
        if good:
            yield score_table(
                score_rows(good, distributions[finite], held.model.model_version, scored_at), self.keep_columns
            )

    def _fail(self, image: DecodedImage, error_type: str, message: str):
        self.errors.inc(len(image.members))
        for member in image.members:
            yield TaggedOutput(ERRORS, error_row(member.ref, "score", error_type, message))


class ScoreImages(beam.PTransform):
    """DecodedImage -> tables of score rows (main output) and error rows (``errors``), in
    batches of at most ``batch_size``."""

    def __init__(
        self,
        engine: str = "auto",
        weights: str | None = None,
        batch_size: int = 32,
        num_threads: int | None = None,
        progress_seconds: float = 0,
        keep_columns=(),
    ):
        super().__init__()
        self.keep_columns = tuple(keep_columns)
        self.engine = engine
        self.weights = weights
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.progress_seconds = progress_seconds

    def expand(self, images):
        return (
            images
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
            | "Infer"
            >> beam.ParDo(
                ScoreBatches(self.engine, self.weights, self.num_threads, self.progress_seconds, self.keep_columns)
            ).with_outputs(ERRORS, main="scores")
        )
