"""aisthetics: NIMA image aesthetics scoring, one image or a whole catalog.

The stages of the Beam pipeline live in one module each (manifest, fetch, decode,
score, write); :func:`get_aisthetics_model` is the seed-compatible one-line API.
"""

from aisthetics_transforms.api import AestheticsModel, ImageScoringError, get_aisthetics_model

__version__ = "0.1.0"
__all__ = ["AestheticsModel", "ImageScoringError", "get_aisthetics_model", "__version__"]
