"""Shared test fixtures: the ground-truth photos in ../shared/fixtures and one model cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AVA = REPO.parent / "shared" / "fixtures" / "ava"
AVA_ABSENT = "../shared/fixtures/ava is absent (it sits beside the checkout in CI); parity tests need its photos"

# The seed README's printed outputs (../shared/fixtures/README.md): the ground truth.
SEED_SCORES = {
    "42039.jpg": {
        "mean": 5.154479802262358,
        "sd": 1.4039202179181693,
        "predictions": [
            1.872770008048974e-05, 0.03170372545719147, 0.07744381576776505, 0.18988454341888428,
            0.33110326528549194, 0.21527288854122162, 0.0972161516547203, 0.044985581189394,
            0.012080984190106392, 0.0002903776185121387,
        ],
    },
    "42041.jpg": {
        "mean": 5.450398804605356,
        "sd": 1.4300220472301666,
        "predictions": [
            1.95023458218202e-05, 0.018782516941428185, 0.058153558522462845, 0.15053792297840118,
            0.3187156915664673, 0.24706070125102997, 0.120249442756176, 0.060940422117710114,
            0.02441250905394554, 0.0011277177836745977,
        ],
    },
}


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """One LiteRT cache for the whole run (subprocesses inherit it): the first load converts."""
    path = tmp_path_factory.mktemp("model-cache")
    os.environ["AISTHETICS_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def ava() -> Path:
    if not AVA.is_dir():
        pytest.skip(AVA_ABSENT)
    return AVA


@pytest.fixture(scope="session")
def litert_model(model_cache):
    from aisthetics_transforms import get_aisthetics_model

    return get_aisthetics_model(engine="litert")


@pytest.fixture(scope="session")
def keras_model(model_cache):
    from aisthetics_transforms import get_aisthetics_model

    return get_aisthetics_model(engine="keras")


@pytest.fixture(scope="session")
def models(litert_model, keras_model):
    return {"litert": litert_model, "keras": keras_model}
