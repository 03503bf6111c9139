"""``NimaModelHandler`` in Beam's own RunInference, in a real pipeline (the FnApiRunner): PIL
images and uint8 arrays of any size score as ``predict()`` scores their files; keyed elements,
dead letters for what is no image, Beam's RunInference metrics, and batching by its keywords."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from apache_beam import Create, Map, Pipeline
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from aisthetics_transforms import NimaModelHandler

pytestmark = pytest.mark.slow  # Beam pipelines with the model


def gathered(pcoll, into):
    """Runs the pipeline's elements through a matcher that keeps them (Beam pickles what a step
    calls, so a test reads what the pipeline made from the matcher's own copy, written to a file)."""

    def keep(elements):
        into.write_bytes(pickle.dumps(list(elements)))

    assert_that(pcoll, keep, label=f"keep {into.name}")


@pytest.fixture(scope="module")
def expected(photos, litert_model):
    """Each photo's scores by the seed's API, on its file."""
    return {str(p): r for p, r in zip(photos, litert_model.predict([str(p) for p in photos], augmented=True))}


def test_run_inference_scores_pil_images_and_arrays_as_predict_does(photos, expected, litert_model, tmp_path):
    images = [Image.open(p) for p in photos[:3]] + [np.asarray(Image.open(p).convert("RGB")) for p in photos[3:]]
    keys = [str(p) for p in photos]
    with Pipeline(runner=FnApiRunner()) as p:
        results = p | Create(list(zip(keys, images))) | RunInference(KeyedModelHandler(NimaModelHandler()))
        gathered(results, tmp_path / "keyed")
    keyed = pickle.loads((tmp_path / "keyed").read_bytes())
    assert sorted(key for key, _ in keyed) == sorted(keys)
    for key, result in keyed:
        assert isinstance(result, PredictionResult) and result.model_id == litert_model.model_version
        want = expected[key]
        assert result.inference["mean_score"] == pytest.approx(want["mean_score_prediction"], abs=1e-4)
        assert result.inference["sd_score"] == pytest.approx(want["sd_score_prediction"], abs=1e-4)
        np.testing.assert_allclose(result.inference["predictions"], want["predictions"], atol=1e-4)
        assert result.inference["predictions"].shape == (10,)


def test_what_is_no_image_goes_to_the_dead_letters_and_the_rest_is_scored(photos, tmp_path):
    good = [Image.open(p) for p in photos[:2]]
    bad = [np.zeros((8, 8, 3), np.float32), "not an image"]
    with Pipeline(runner=FnApiRunner()) as p:
        main, other = (
            p
            | Create(good + bad, reshuffle=False)
            | RunInference(NimaModelHandler(min_batch_size=1, max_batch_size=1)).with_exception_handling()
        )
        gathered(main | Map(lambda r: r.inference["mean_score"]), tmp_path / "scored")
        gathered(other.failed_inferences | Map(lambda failure: str(failure[0])), tmp_path / "failed")
    assert len(pickle.loads((tmp_path / "scored").read_bytes())) == 2
    failed = pickle.loads((tmp_path / "failed").read_bytes())
    assert len(failed) == 2 and any("not an image" in f for f in failed)


def test_beams_run_inference_metrics_are_reported_and_batches_follow_its_keywords(photos):
    handler = NimaModelHandler(min_batch_size=2, max_batch_size=2)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 2}
    p = Pipeline(runner=FnApiRunner())
    sizes = p | Create([Image.open(path) for path in photos[:4]]) | RunInference(handler) | Map(lambda r: 1)
    assert_that(sizes, equal_to([1] * 4))
    result = p.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter())
    counters = {c.key.metric.name: c.committed for c in metrics["counters"]}
    distributions = {d.key.metric.name: d.committed for d in metrics["distributions"]}
    assert counters["num_inferences"] == 4
    assert distributions["inference_batch_latency_micro_secs"].count == 2  # two batches of two
    assert "load_model_latency_milli_secs" in distributions


def test_the_handler_refuses_what_is_no_rgb_image_in_one_line():
    from aisthetics_transforms.preprocess import seed_pixels

    with pytest.raises(ValueError, match=r"expected an RGB image as uint8 HxWx3 \(or HxW, HxWx4\), got float32"):
        seed_pixels(np.zeros((4, 4, 3), np.float32))
    assert seed_pixels(np.zeros((5, 7), np.uint8)).shape == (224, 224, 3)


def test_the_readme_example_runs_as_written(photos, tmp_path):
    """The README's handler example, verbatim, in a fresh interpreter, on two photos named as it names them."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    [example] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "NimaModelHandler" in b]
    Image.open(photos[0]).save(tmp_path / "a.jpg")
    Image.open(photos[1]).convert("RGBA").save(tmp_path / "b.png")
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = sorted(line.split() for line in done.stdout.splitlines() if line.startswith("listing-"))
    assert [key for key, _, _ in printed] == ["listing-1", "listing-2"]
    assert all(1.0 <= float(mean) <= 10.0 and model_id.startswith("nima-mobilenet-") for _, mean, model_id in printed)
