"""The score stage without a pipeline: each image's distribution and its statistics, and
ScoreBatches driven as Beam drives it, with the real LiteRT model."""

from __future__ import annotations

import hashlib
import itertools
import threading
from datetime import UTC, datetime

import numpy as np
import pytest
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

from aisthetics_transforms import score
from aisthetics_transforms.preprocess import decode_image_and_orientation, to_model_input
from aisthetics_transforms.records import STATS, ContentResult, DecodedImage
from aisthetics_transforms.score import ModelSpec, ScoreBatches, content_results

SCORED_AT = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
RATINGS = np.arange(1, 11)


def decoded(paths) -> list[DecodedImage]:
    images = []
    for path in paths:
        data = path.read_bytes()
        pixels, orientation = decode_image_and_orientation(data)
        images.append(DecodedImage(hashlib.sha256(data).hexdigest(), str(path), pixels, orientation))
    return images


def test_each_image_gets_its_distribution_its_mean_and_its_spread():
    rng = np.random.default_rng(5)
    distributions = rng.dirichlet(np.ones(10), size=3).astype(np.float32)
    pixels = np.zeros((224, 224, 3), np.uint8)
    images = [DecodedImage(f"{i:064x}", f"/{i}.jpg", pixels, orientation) for i, orientation in enumerate([None, 6, 1])]
    results = list(content_results(images, distributions, "nima-test", SCORED_AT))
    assert [r.content_sha256 for r in results] == [i.content_sha256 for i in images]
    for image, p, result in zip(images, distributions, results, strict=True):
        score = result.score
        p64 = p.astype(np.float64)
        p64 /= p64.sum()
        mean = (RATINGS * p64).sum()
        assert score.mean_score == pytest.approx(mean, abs=1e-12)
        assert score.sd_score == pytest.approx(np.sqrt(((RATINGS - mean) ** 2 * p64).sum()), abs=1e-12)
        assert score.predictions == tuple(float(v) for v in p) and len(score.predictions) == 10
        assert (score.model_version, score.scored_at, score.exif_orientation) == (
            "nima-test",
            SCORED_AT,
            image.exif_orientation,
        )
        assert result.failure is None and result.reused is False


def run_bundle(batches: list[list[DecodedImage]], after_call=lambda i: None) -> tuple[list[list], list]:
    """ScoreBatches over one bundle: what each ``process`` call emitted, and ``finish_bundle``'s
    outputs (unwrapped from their windows). ``after_call(i)`` runs when call ``i`` returned."""
    fn = ScoreBatches(ModelSpec(engine="litert", batch_size=8, inference_threads=1))
    fn.setup()
    try:
        fn.start_bundle()
        per_call = []
        for i, batch in enumerate(batches):
            per_call.append(list(fn.process(batch)))
            after_call(i)
        finished = list(fn.finish_bundle())
    finally:
        fn.teardown()
    unwrapped = []
    for output in finished:
        if isinstance(output, TaggedOutput):
            assert isinstance(output.value, WindowedValue)
            unwrapped.append(TaggedOutput(output.tag, output.value.value))
        else:
            assert isinstance(output, WindowedValue)
            unwrapped.append(output.value)
    return per_call, unwrapped


def test_every_image_of_every_batch_is_scored_as_the_model_scores_it(photos, litert_model):
    images = decoded(photos)
    batches = [images[:2], images[2:3], images[3:]]
    per_call, finished = run_bundle(batches)
    results = [o for o in [*sum(per_call, []), *finished] if isinstance(o, ContentResult)]
    assert sorted(r.content_sha256 for r in results) == sorted(i.content_sha256 for i in images)
    expected = litert_model.model.predict(to_model_input([image.pixels for image in images]))
    by_sha = {r.content_sha256: r for r in results}
    for image, p in zip(images, expected, strict=True):
        score = by_sha[image.content_sha256].score
        np.testing.assert_allclose(score.predictions, p, atol=1e-6)
        assert score.model_version == litert_model.model_version
    assert [o.value for o in finished if isinstance(o, TaggedOutput) and o.tag == STATS] == [{"inferred": len(images)}]


def test_a_batch_the_model_rejects_is_failures_naming_each_image_and_the_rest_is_scored(photos, litert_model):
    good = decoded(photos[:2])
    thumbnail = DecodedImage("ee" * 32, "/tiny.jpg", np.zeros((10, 10, 3), np.uint8))  # not the model's input shape
    per_call, finished = run_bundle([good[:1], [good[1], thumbnail], good[:1]])
    results = [o for o in [*sum(per_call, []), *finished] if isinstance(o, ContentResult)]
    failed = [r for r in results if r.failure is not None]
    assert sorted(r.content_sha256 for r in failed) == sorted([good[1].content_sha256, thumbnail.content_sha256])
    for result in failed:
        assert (result.failure.stage, result.failure.error_type) == ("score", "InferenceFailed")
        assert result.failure.message.startswith(("/tiny.jpg: ", f"{good[1].uri}: "))
        assert "the model failed on a batch of 2" in result.failure.message
    assert [r.content_sha256 for r in results if r.score is not None] == [good[0].content_sha256] * 2
    assert [o.value for o in finished if isinstance(o, TaggedOutput) and o.tag == STATS] == [{"inferred": 2}]


def test_inference_runs_one_batch_behind_so_decoding_overlaps_it(photos, litert_model, monkeypatch):
    """The score stage's docstring: while LiteRT scores batch N, ``process`` returns, and
    the call for batch N+1 emits batch N's results; ``finish_bundle`` emits the last batch's."""
    images = decoded(photos)
    batches = [images * 2] * 3
    # Batch i's inference finishes only after process(batch i) returned, however fast the model.
    returned = [threading.Event() for _ in batches]
    calls = itertools.count()
    infer = score._infer

    def infer_after_its_call(model, batch):
        assert returned[next(calls)].wait(30)
        return infer(model, batch)

    monkeypatch.setattr(score, "_infer", infer_after_its_call)
    per_call, finished = run_bundle(batches, after_call=lambda i: returned[i].set())
    assert [len(outputs) for outputs in per_call] == [0, 10, 10]
    assert len([o for o in finished if isinstance(o, ContentResult)]) == 10
