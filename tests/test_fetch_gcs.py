"""gs:// fetches and version checks against the real GCS emulator, with every request the
client makes counted by a recording proxy in between (each one is billed on GCS)."""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest
from gcs_emulator import counting_proxy, gcs  # noqa: F401  (pytest fixture)

from aisthetics_transforms import fetch
from aisthetics_transforms.fetch import FetchError, FetchLimits
from aisthetics_transforms.fetch.gcs import pinned_generation
from aisthetics_transforms.fetch.guards import BYTES_IN_FLIGHT

pytestmark = pytest.mark.slow  # the GCS emulator

DATA = bytes(range(256)) * 64  # 16 KiB
LIMITS = FetchLimits(deadline=20)


@pytest.fixture
def proxy(gcs, monkeypatch):
    with counting_proxy(gcs.host) as counting:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", counting.host)
        yield counting


@pytest.fixture
def uploaded(gcs):
    name = f"fetch-gcs/{uuid.uuid4().hex}.jpg"
    return name, gcs.upload_bytes(name, DATA, "image/jpeg")


def _requests(proxy, name):
    """The (kind, path) of each request since the last call: metadata or media."""
    made = [(method, path) for method, path in proxy.requests]
    proxy.requests.clear()
    object_path = "/o/" + name.replace("/", "%2F")
    assert all(object_path in path for _, path in made), made
    return [("media" if "alt=media" in path else "metadata", path) for _, path in made]


def test_a_version_check_is_one_metadata_request(proxy, uploaded):
    name, uri = uploaded
    version = fetch.check_version(uri, LIMITS)
    [(kind, _)] = _requests(proxy, name)
    assert kind == "metadata"
    assert version.failed is None
    assert version.value.startswith("generation=") and version.value.endswith(f";size={len(DATA)}")
    assert fetch.check_version(uri, LIMITS).value == version.value  # stable while unchanged
    _requests(proxy, name)


def test_a_fetch_is_one_metadata_and_one_pinned_media_request(proxy, uploaded):
    name, uri = uploaded
    fetched = fetch.fetch_image(uri, LIMITS)
    made = _requests(proxy, name)
    assert [kind for kind, _ in made] == ["metadata", "media"]
    assert fetched.data == DATA and type(fetched.data) is bytes
    generation, size = pinned_generation(fetched.pin)
    assert size == len(DATA) and f"generation={generation}" in made[1][1]  # the bytes of the version it reports
    assert fetched.version == fetch.check_version(uri, LIMITS).value


def test_a_fetch_after_a_version_check_is_one_media_request(proxy, uploaded):
    name, uri = uploaded
    version = fetch.check_version(uri, LIMITS)
    _requests(proxy, name)
    fetched = fetch.fetch_image(uri, LIMITS, known=version.info)
    assert [kind for kind, _ in _requests(proxy, name)] == ["media"]
    assert (fetched.data, fetched.version) == (DATA, version.value)


def test_a_fetch_after_a_stale_version_check_fetches_the_current_object(gcs, proxy, uploaded):
    name, uri = uploaded
    version = fetch.check_version(uri, LIMITS)
    time.sleep(0.01)  # the emulator's generations are timestamps
    gcs.upload_bytes(name, b"replaced after the check", "image/jpeg")
    _requests(proxy, name)
    # GCS answers 404 for the replaced generation; the emulator ignores the pin and
    # sends the new bytes, whose size differs from the old metadata's. Either way:
    fetched = fetch.fetch_image(uri, LIMITS, known=version.info)
    assert fetched.data == b"replaced after the check" and fetched.version != version.value
    assert fetched.version == fetch.check_version(uri, LIMITS).value


def test_a_pinned_refetch_is_one_media_request_and_fails_once_the_object_changed(gcs, proxy, uploaded):
    name, uri = uploaded
    fetched = fetch.fetch_image(uri, LIMITS)
    sha = hashlib.sha256(fetched.data).hexdigest()
    _requests(proxy, name)
    BYTES_IN_FLIGHT.peak = BYTES_IN_FLIGHT.in_use
    assert fetch.refetch(uri, sha, fetched.pin, LIMITS) == DATA
    assert BYTES_IN_FLIGHT.peak - BYTES_IN_FLIGHT.in_use == len(DATA)  # its size, not max_bytes, was reserved
    [(kind, path)] = _requests(proxy, name)
    generation, _ = pinned_generation(fetched.pin)
    assert kind == "media" and f"generation={generation}" in path

    time.sleep(0.01)  # the emulator's generations are timestamps
    gcs.upload_bytes(name, b"rewritten during the run", "image/jpeg")
    with pytest.raises(FetchError) as info:
        fetch.refetch(uri, sha, fetched.pin, LIMITS)
    assert info.value.error_type == "ChangedDuringRun" and uri in str(info.value)
    [(kind, path)] = _requests(proxy, name)
    assert kind == "media" and f"generation={generation}" in path
    assert fetch.check_version(uri, LIMITS).value != fetched.version


def test_a_too_large_object_is_refused_from_its_metadata(proxy, uploaded):
    name, uri = uploaded
    with pytest.raises(FetchError) as info:
        fetch.fetch_image(uri, FetchLimits(max_bytes=1000))
    assert info.value.error_type == "TooLarge" and f"object size {len(DATA)}" in str(info.value)
    assert [kind for kind, _ in _requests(proxy, name)] == ["metadata"]  # never downloaded


def test_a_missing_object_fails_its_check_and_its_fetch(proxy, gcs):
    name = f"fetch-gcs/{uuid.uuid4().hex}-missing.jpg"
    uri = gcs.uri(name)
    version = fetch.check_version(uri, LIMITS)
    assert version.value is None and "NotFound" in version.failed and uri in version.failed
    assert len(_requests(proxy, name)) == 1
    with pytest.raises(FetchError) as info:
        fetch.fetch_image(uri, LIMITS)
    assert info.value.error_type == "NotFound" and uri in str(info.value)
    assert len(_requests(proxy, name)) == 1


def test_a_dribbling_storage_endpoint_cannot_outlast_the_deadline(gcs, monkeypatch):
    """The GCS client's requests sit inside the per-image deadline too: an endpoint that
    sends its headers a byte at a time ends both the check and the fetch on time."""
    from test_fetch_deadlines import RawServer, dribble_headers

    server = RawServer(dribble_headers)
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.port}")
        limits = FetchLimits(deadline=2, read_timeout=5)
        uri = gcs.uri("fetch-gcs/dribbled.jpg")
        started = time.monotonic()
        version = fetch.check_version(uri, limits)
        assert time.monotonic() - started <= 2 + 0.75
        assert version.value is None and "DeadlineExceeded" in version.failed
        started = time.monotonic()
        with pytest.raises(FetchError) as info:
            fetch.fetch_image(uri, limits)
        assert time.monotonic() - started <= 2 + 0.75
        assert info.value.error_type == "DeadlineExceeded" and uri in str(info.value)
    finally:
        server.close()
