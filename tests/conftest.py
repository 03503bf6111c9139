"""Shared test fixtures: photos the package makes, one model cache, the markers that follow
from what a test uses, and the seed's ground-truth photos (../shared) for the parity tests only."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from aisthetics_transforms.sample import write_sample_catalog

REPO = Path(__file__).resolve().parents[1]
AVA = REPO.parent / "shared" / "fixtures" / "ava"
AVA_ABSENT = (
    f"{AVA} is absent (CI puts ../shared beside the checkout): the seed-parity tests compare the "
    "seed README's printed scores of its photos 42039.jpg and 42041.jpg"
)

# The seed README's printed outputs (../shared/fixtures/README.md): the ground truth.
SEED_SCORES = {
    "42039.jpg": {
        "mean": 5.154479802262358,
        "sd": 1.4039202179181693,
        "predictions": [
            1.872770008048974e-05,
            0.03170372545719147,
            0.07744381576776505,
            0.18988454341888428,
            0.33110326528549194,
            0.21527288854122162,
            0.0972161516547203,
            0.044985581189394,
            0.012080984190106392,
            0.0002903776185121387,
        ],
    },
    "42041.jpg": {
        "mean": 5.450398804605356,
        "sd": 1.4300220472301666,
        "predictions": [
            1.95023458218202e-05,
            0.018782516941428185,
            0.058153558522462845,
            0.15053792297840118,
            0.3187156915664673,
            0.24706070125102997,
            0.120249442756176,
            0.060940422117710114,
            0.02441250905394554,
            0.0011277177836745977,
        ],
    },
}

# A fixture that starts something heavy marks every test using it, in whichever file:
# the GCS emulator and whole-pipeline nights are slow, Chromium is a browser.
FIXTURE_MARKERS = {"gcs": "slow", "pipeline_nights": "slow", "chromium": "browser"}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture in FIXTURE_MARKERS.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(FIXTURE_MARKERS[fixture])


@pytest.fixture(autouse=True)
def no_host_remembered():
    """Each test starts with no host of this process tripped, rate-limited or asking to wait
    (``fetch.hosts``): loopback servers of one test must not trip those of the next."""
    from aisthetics_transforms.fetch.hosts import HOSTS

    HOSTS.clear()
    yield
    HOSTS.clear()


@pytest.fixture(scope="session", autouse=True)
def model_cache(request, tmp_path_factory) -> Path:
    """One LiteRT cache for the whole run (subprocesses inherit it): the first load converts
    (~10 s). It is kept in pytest's cache directory, so later runs start warm (``pytest
    --cache-clear`` empties it); tests of a cold start make their own empty cache."""
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    path = cache.mkdir("aisthetics-model-cache") if cache is not None else tmp_path_factory.mktemp("model-cache")
    os.environ["AISTHETICS_CACHE_DIR"] = str(path)
    return path


def sample_photo_paths(directory: Path, count: int, size: tuple[int, int], seed: int) -> list[Path]:
    """``count`` distinct catalog photos (JPEG) written by the package's sample catalog."""
    manifest = write_sample_catalog(directory, count=count, size=size, broken=False, seed=seed)
    with open(manifest, newline="") as f:
        return [Path(row["uri"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> list[Path]:
    """Five real photos with distinct bytes, three landscape and two portrait, cropped and
    re-lit from the two scikit-learn ships. Shared by the session: copy one before changing it."""
    root = tmp_path_factory.mktemp("photos")
    return sample_photo_paths(root / "landscape", 3, (800, 600), seed=1) + sample_photo_paths(
        root / "portrait", 2, (450, 600), seed=2
    )


@pytest.fixture(scope="session")
def ava() -> Path:
    """The seed's photos: only for the tests that compare to the seed README's printed scores."""
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
