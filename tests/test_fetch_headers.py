"""Response headers parsed ASCII-strict: whatever value a server sends for a length, a
Retry-After, a redirect's Location or a validator, a fetch ends with its bytes or a stable
fetch error tag, never InternalError. Property-based (Hypothesis) against a raw-socket
server on 127.0.0.1 that sends the header exactly as generated."""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aisthetics_transforms.fetch import FETCH_ERROR_TYPES, FetchError, FetchLimits, check_version, fetch_bytes
from aisthetics_transforms.fetch.hosts import HOSTS

BODY = b"0123456789" * 10
LIMITS = FetchLimits(allow_private_hosts=True, deadline=3, read_timeout=2, retries=1, backoff=0.01, breaker_failures=0)
TAGS = set(FETCH_ERROR_TYPES) - {"InternalError"}


class RawServer:
    """Answers each connection with ``self.response`` (bytes, as they are) and closes it."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.response = b""
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/photo.jpg"

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(2)
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    conn.sendall(
                        self.response
                        if not request.startswith(b"HEAD")
                        else self.response.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
                    )
                except OSError:
                    pass


@pytest.fixture(scope="module")
def server():
    srv = RawServer()
    yield srv
    srv.listener.close()


# Header values as a hostile server may send them: any text (Unicode digits such as "²" or
# "٣", signs, spaces, commas, control characters), encoded as UTF-8 or Latin-1 bytes.
values = st.one_of(
    st.text(max_size=24),
    st.text(alphabet="0123456789²³¹٣۴߅०१൧௫", min_size=1, max_size=6),  # all str.isdigit(), few int()
    st.text(alphabet="0123456789²³ ,+-.eE\t", max_size=12),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
).map(lambda text: text.replace("\r", "").replace("\n", ""))
encodings = st.sampled_from(["utf-8", "latin-1"])


def answer(status: str, header: str, value: str, encoding: str, body: bytes = BODY) -> bytes:
    try:
        raw = value.encode(encoding)
    except UnicodeEncodeError:
        raw = value.encode("utf-8")
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\n"
        + header.encode()
        + b": "
        + raw
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )


def outcome(call):
    """'ok', or the error tag a FetchError carried; anything else fails the test."""
    try:
        call()
        return "ok"
    except FetchError as err:
        return err.error_type


settings_ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings_
@given(value=values, encoding=encodings)
@example(value="²", encoding="latin-1")  # str.isdigit() says yes, int() says no
def test_any_content_length_is_a_body_or_a_stable_tag(server, value, encoding):
    HOSTS.clear()
    server.response = answer("200 OK", "Content-Length", value, encoding)
    assert outcome(lambda: fetch_bytes(server.url, LIMITS)) in TAGS | {"ok"}


@settings_
@given(value=values, encoding=encodings, status=st.sampled_from(["429 Too Many", "503 Busy"]))
@example(value="³", encoding="latin-1", status="429 Too Many")
def test_any_retry_after_is_a_stable_tag(server, value, encoding, status):
    HOSTS.clear()
    server.response = answer(status, "Retry-After", value, encoding, b"")
    assert outcome(lambda: fetch_bytes(server.url, LIMITS)) in TAGS


@settings_
@given(value=values, encoding=encodings, status=st.sampled_from(["301 Moved", "302 Found", "307 Temporary"]))
def test_any_location_is_a_redirect_or_a_stable_tag(server, value, encoding, status):
    HOSTS.clear()
    server.response = answer(status, "Location", value, encoding, b"")
    assert outcome(lambda: fetch_bytes(server.url, LIMITS)) in TAGS | {"ok"}


@settings_
@given(
    value=values,
    encoding=encodings,
    header=st.sampled_from(["ETag", "Last-Modified", "Content-Length", "Content-Range", "Transfer-Encoding"]),
)
def test_any_validator_gives_a_version_or_a_failed_check_with_a_stable_tag(server, value, encoding, header):
    HOSTS.clear()
    server.response = answer("200 OK", header, value, encoding)
    version = check_version(server.url, LIMITS)  # never raises
    assert version.error_type is None or version.error_type in TAGS, version.failed
    assert outcome(lambda: fetch_bytes(server.url, LIMITS)) in TAGS | {"ok"}


def test_a_content_length_of_two_numbers_is_an_invalid_response_naming_it(server):
    server.response = answer("200 OK", "Content-Length", "5, 6", "latin-1")
    with pytest.raises(FetchError) as info:
        fetch_bytes(server.url, LIMITS)
    assert info.value.error_type == "InvalidResponse" and "Content-Length" in str(info.value)
