"""NIMA for Beam's RunInference: :class:`NimaModelHandler`, a ``ModelHandler`` over RGB images.

Any Beam pipeline can score images with NIMA the way Beam users score with any model::

    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from aisthetics_transforms import NimaModelHandler

    scored = images | RunInference(NimaModelHandler())   # PIL images or uint8 arrays, any size

and gets what RunInference gives every handler: batching (``min_batch_size``,
``max_batch_size``... as keyword arguments, Beam's ``batch_elements_kwargs``), one model per
worker process, ``KeyedModelHandler`` for keyed elements, ``with_exception_handling()`` dead
letters, and Beam's RunInference metrics (``num_inferences``,
``inference_batch_latency_micro_secs``, ``load_model_latency_milli_secs``...).

Each element is preprocessed the seed's way (``convert('RGB')``, resized to 224x224 with
NEAREST, ``x / 127.5 - 1``), so its scores are those of ``get_aisthetics_model().predict()``.
Each ``PredictionResult.inference`` is ``{"predictions": the 10 probabilities (float32),
"mean_score": ..., "sd_score": ...}``; ``model_id`` names the weights and the engine
(``nima-mobilenet-e563ad91b3d4-litert``).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from PIL import Image

from aisthetics_transforms.model import DEFAULT_ENGINE, LoadedModel, distribution_stats, load_model
from aisthetics_transforms.preprocess import seed_pixels, to_model_input

RGBImage = Union[Image.Image, np.ndarray]


class NimaModelHandler(ModelHandler[RGBImage, PredictionResult, LoadedModel]):
    """NIMA (LiteRT by default, or Keras) on the packaged weights, for ``RunInference``.

    ``engine``: 'auto' (= 'litert'), 'litert' or 'keras'; ``weights``: another NIMA MobileNet
    HDF5 (local or a Beam-readable uri), None for the seed's; ``inference_threads``: LiteRT
    threads per process (default: every core); Beam's batching keywords pass through."""

    def __init__(
        self,
        engine: str = DEFAULT_ENGINE,
        weights: Optional[str] = None,
        inference_threads: Optional[int] = None,
        **batching: Any,
    ):
        super().__init__(**batching)
        self._engine, self._weights, self._threads = engine, weights, inference_threads

    def load_model(self) -> LoadedModel:
        return load_model(self._engine, self._weights, self._threads)

    def run_inference(
        self, batch: Sequence[RGBImage], model: LoadedModel, inference_args: Optional[dict] = None
    ) -> Iterable[PredictionResult]:
        distributions = model.predict(to_model_input([seed_pixels(image) for image in batch]))
        for example, p in zip(batch, distributions):
            mean, sd = distribution_stats(p)
            yield PredictionResult(example, {"predictions": p, "mean_score": mean, "sd_score": sd}, model.model_version)

    def get_num_bytes(self, batch: Sequence[RGBImage]) -> int:
        """The pixels' bytes (Beam's default would pickle every image to measure it)."""
        return sum(
            image.nbytes if isinstance(image, np.ndarray) else image.width * image.height * len(image.getbands())
            for image in batch
        )
