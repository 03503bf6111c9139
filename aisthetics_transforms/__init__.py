"""aisthetics: NIMA image aesthetics scoring, one image or a whole catalog.

The stages of the Beam pipeline live in one module each (manifest, fetch, decode,
score, write); :func:`get_aisthetics_model` is the seed-compatible one-line API.
"""

from aisthetics_transforms.api import AestheticsModel, ImageScoringError, get_aisthetics_model

__version__ = "0.1.0"
__all__ = ["AestheticsModel", "ImageScoringError", "NimaModelHandler", "get_aisthetics_model", "__version__"]


def __getattr__(name: str):
    # Beam's RunInference is imported only by who asks for the handler (the CLI does not).
    if name == "NimaModelHandler":
        from aisthetics_transforms.inference import NimaModelHandler

        return NimaModelHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
