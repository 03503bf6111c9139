"""Score stage: batches of DecodedImage -> one ContentResult per distinct content, with one model per worker process.

The model is loaded in ``setup()`` through ``apache_beam.utils.shared.Shared``: every
DoFn instance (Beam makes one per thread, and may call ``setup`` again) in a process
gets the same loaded model, so the weights are read and the interpreter built once per
worker process. The ``model_loads`` counter records each real load.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils import shared

from aisthetics_transforms.bundles import WorkPool, in_global_window
from aisthetics_transforms.counters import MODEL_LOADS, SCORE_ERRORS, SCORED, counter
from aisthetics_transforms.model import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ENGINE,
    LoadedModel,
    distribution_stats,
    load_model,
    show_logs,
)
from aisthetics_transforms.preprocess import to_model_input
from aisthetics_transforms.progress import inc
from aisthetics_transforms.records import STATS, ContentResult, DecodedImage, Failure, Score


@dataclass(frozen=True)
class ModelSpec:
    """Which model scores, and how: the score stage's options."""

    engine: str = DEFAULT_ENGINE
    weights: Optional[str] = None
    batch_size: int = DEFAULT_BATCH_SIZE
    inference_threads: Optional[int] = None  # LiteRT threads per worker process
    staged_model: Optional[str] = None  # the converted model the launcher staged with the job
    verbose: bool = False  # --verbose: TensorFlow's and LiteRT's own logs, on the workers too


def content_results(images: Sequence[DecodedImage], distributions: np.ndarray, model_version: str, scored_at: datetime):
    """One ContentResult per image of a batch: its distribution, mean and sd."""
    for image, p in zip(images, distributions):
        mean, sd = distribution_stats(p)
        score = Score(mean, sd, tuple(float(v) for v in p), model_version, scored_at, image.exif_orientation)
        yield ContentResult(image.content_sha256, score)


class _ProcessModel:
    """The per-process model, and whether its load has been counted yet.

    Metrics can only be updated inside ``process``, not in ``setup``, hence the flag.
    """

    def __init__(self, model: LoadedModel):
        self.model = model
        self.load_uncounted = True
        self.lock = threading.Lock()


def _infer(model: LoadedModel, batch: Sequence[DecodedImage]) -> tuple[np.ndarray, datetime]:
    distributions = model.predict(to_model_input([image.pixels for image in batch]))
    return distributions, datetime.now(UTC)


class ScoreBatches(beam.DoFn):
    """Batches of DecodedImage -> one ContentResult per image; a batch the model rejects
    gives failures (stage ``score``) rather than failing the run.

    Inference runs one batch behind, on a thread of its own: while LiteRT (which releases
    the GIL) scores batch N, the stage goes on decoding batch N+1, whose ``process`` call
    then emits the results of batch N. ``finish_bundle`` emits the last batch's.
    """

    def __init__(self, model: ModelSpec):
        self.model = model
        self._shared = shared.Shared()
        self.scored = counter(SCORED)
        self.errors = counter(SCORE_ERRORS)
        self.model_loads = counter(MODEL_LOADS)

    def setup(self):
        spec = self.model

        def load():
            if spec.verbose:  # the option travels with the spec; the environment of the launcher does not
                show_logs()
            return _ProcessModel(load_model(spec.engine, spec.weights, spec.inference_threads, spec.staged_model))

        self._process_model = self._shared.acquire(load, tag=(spec.engine, spec.weights, spec.inference_threads))
        # One inference thread, at most one batch in flight beyond the one being collected.
        self._inference: WorkPool[Sequence[DecodedImage]] = WorkPool(1, 1, "aisthetics-inference")

    def teardown(self):
        self._inference.shutdown()

    def start_bundle(self):
        self._inference.start()
        self._inferred = 0

    def process(self, batch: Sequence[DecodedImage]):
        held = self._process_model
        if held.load_uncounted:
            with held.lock:
                if held.load_uncounted:
                    held.load_uncounted = False
                    self.model_loads.inc()
        for done in self._inference.submit(batch, _infer, held.model, batch):
            yield from self._results(*done)

    def finish_bundle(self):
        outputs = [out for done in self._inference.drain() for out in self._results(*done)]
        if self._inferred:
            outputs.append(TaggedOutput(STATS, {"inferred": self._inferred}))
        yield from in_global_window(outputs)

    def _results(self, batch: Sequence[DecodedImage], inference: Future):
        held = self._process_model
        try:
            distributions, scored_at = inference.result()
        except Exception as exc:  # e.g. an engine fault: report these images, keep the run
            yield from self._fail(batch, "InferenceFailed", f"the model failed on a batch of {len(batch)}: {exc}")
            return
        finite = np.isfinite(distributions).all(axis=1)
        good = [image for image, ok in zip(batch, finite) if ok]
        yield from self._fail(
            [image for image, ok in zip(batch, finite) if not ok], "InvalidPrediction", "model output is not finite"
        )
        inc(self.scored, len(good))
        self._inferred += len(good)
        yield from content_results(good, distributions[finite], held.model.model_version, scored_at)

    def _fail(self, images: Sequence[DecodedImage], error_type: str, message: str):
        inc(self.errors, len(images))
        for image in images:
            yield ContentResult(image.content_sha256, failure=Failure("score", error_type, f"{image.uri}: {message}"))


class ScoreImages(beam.PTransform):
    """DecodedImage -> ContentResult (``results``) and counts (``STATS``), in batches of at
    most ``model.batch_size``."""

    def __init__(self, model: ModelSpec = ModelSpec()):
        super().__init__()
        self.model = model

    def expand(self, images):
        return (
            images
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.model.batch_size)
            | "Infer" >> beam.ParDo(ScoreBatches(self.model)).with_outputs(STATS, main="results")
        )
