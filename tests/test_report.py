"""`aisthetics report`: the numbers it computes, its thumbnails and placeholders, its
escaping, and the page itself rendered in a real headless Chromium over the DevTools
protocol (no console errors, no request leaving the page, charts and thumbnails visible)."""
from __future__ import annotations

import base64
import contextlib
import html.parser
import io
import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from websockets.sync.client import connect

from aisthetics_transforms import cli, report
from aisthetics_transforms.fetch import FetchLimits
from aisthetics_transforms.sample import write_sample_catalog
from test_queries import NIGHT_A, NIGHT_B, pipeline_nights, synthetic_two_nights, write_night  # noqa: F401
from test_scoring import png_declaring

EVIL_ID = '<script>alert("x")</script>&amp;'
EVIL_CATEGORY = '"><img src=http://127.0.0.1:9/pwn.png>'


class _Attributes(html.parser.HTMLParser):
    """Every tag name and every URL-carrying attribute of a page."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "data", "xlink:href") and value:
                self.urls.append(value)


def parse(page: str) -> _Attributes:
    parser = _Attributes()
    parser.feed(page)
    return parser


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    output = synthetic_two_nights(tmp_path_factory.mktemp("report-synthetic") / "out")
    # A third night whose data tries to inject markup.
    write_night(
        output,
        "2026-11-29",
        [
            {"image_id": EVIL_ID, "mean_score": 2.5, "category": EVIL_CATEGORY},
            {"image_id": "a1", "mean_score": 4.5, "category": "shoes"},
            {"image_id": "a2", "mean_score": 5.25, "category": "shoes"},
        ],
        [{"image_id": "e9", "stage": "decode", "error_type": "CorruptImage", "error_message": "<b>bad</b> & worse"}],
        {"rows": 4, "scored": 1, "reused": 2, "deduplicated": 0, "errors": 1, "model_version": "m<1>"},
    )
    return output


def test_collect_computes_the_nights_numbers_in_duckdb(synthetic):
    data = report.collect(str(synthetic), NIGHT_B, top=2, thumbnails=False)
    assert data.run_date == NIGHT_B and data.table_rows == 6 and data.error_rows == 3
    assert (data.stats.count, round(data.stats.mean, 4), data.stats.median) == (6, 5.0833, 4.75)
    assert data.histogram.total == 6  # every score lands in exactly one bin
    assert data.histogram.lo <= 3.5 and data.histogram.lo + data.histogram.width * len(data.histogram.counts) > 8.0
    assert [s.image_id for s in data.top] == ["a6", "a5"] and [s.image_id for s in data.bottom] == ["a7", "a3"]
    assert data.top[0].kept == {"category": "bags"}
    [column] = data.kept_columns
    assert column.name == "category" and column.distinct == 2 and column.other_images == 0
    groups = {g.value: g for g in column.groups}
    assert groups["bags"].stats.count == 3 and groups["bags"].histogram.total == 3
    assert groups["shoes"].previous_mean == pytest.approx((4.0 + 5.0 + 5.5) / 3)
    assert [(e["stage"], e["error_type"], e["count"], e["previous"]) for e in data.errors] == [
        ("fetch", "NotFound", 1, 2),
        ("fetch", "Timeout", 1, 0),
        ("manifest", "MissingUri", 1, 0),
    ]
    c = data.comparison
    assert c.previous_date == NIGHT_A and (c.in_both, c.added, c.removed, c.changed) == (4, 2, 1, 2)
    assert c.mean_change_in_both == pytest.approx((0.5 - 2.0) / 4)
    assert [(m.image_id, m.before, m.mean_score) for m in c.movers] == [("a3", 6.0, 4.0), ("a1", 4.0, 4.5)]
    assert c.histogram.total == 5 and c.stats.mean == pytest.approx(5.5)
    assert data.summary["reused"] == 2


def test_kept_columns_are_the_extra_string_columns(tmp_path):
    output = tmp_path / "out"
    write_night(output, NIGHT_A, [{"image_id": "x", "mean_score": 5.0, "category": "c", "seller": "s"}],
                keep=("category", "seller"), files=1)
    data = report.collect(str(output), NIGHT_A, thumbnails=False)
    assert [k.name for k in data.kept_columns] == ["category", "seller"]
    assert data.comparison is None and data.bottom == []  # one image: shown once, in the top


def test_the_page_escapes_the_data_and_embeds_everything(synthetic):
    path = report.write_report(str(synthetic), "2026-11-29", top=12)
    assert path == f"{synthetic}/reports/dt=2026-11-29/report.html"
    page = Path(path).read_text()
    assert EVIL_ID not in page and EVIL_CATEGORY not in page and "<b>bad</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;amp;" in page
    assert "&quot;&gt;&lt;img src=http://127.0.0.1:9/pwn.png&gt;" in page
    assert "&lt;b&gt;bad&lt;/b&gt; &amp; worse" in page and "m&lt;1&gt;" in page
    tags = parse(page)
    assert "script" not in tags.tags and "link" not in tags.tags and "iframe" not in tags.tags
    assert all(u.startswith("data:") for u in tags.urls), [u for u in tags.urls if not u.startswith("data:")][:3]
    assert "default-src 'none'" in page  # the CSP: nothing but inline style and data: images
    # Thumbnails of files that do not exist: placeholders naming why.
    assert page.count('class="thumb-missing"') == 3 + 1  # three images, one mover (a1)
    assert "NotFound" in page
    assert "Change since 2026-11-28" in page and "By category" in page


def test_a_night_with_no_scores_still_renders(tmp_path):
    output = tmp_path / "out"
    write_night(output, NIGHT_A, [], [{"image_id": "e", "stage": "fetch", "error_type": "NotFound"}],
                {"rows": 1, "scored": 0, "reused": 0, "errors": 1, "model_version": "m"}, files=1)
    page = Path(report.write_report(str(output), NIGHT_A)).read_text()
    assert "No scored images." in page and "NotFound" in page


def test_the_newest_night_is_the_default(synthetic):
    assert report.collect(str(synthetic), thumbnails=False).run_date == "2026-11-29"


def test_cli_writes_the_report_and_prints_its_path(synthetic, capsys):
    assert cli.main(["report", str(synthetic), f"--run_date={NIGHT_A}", "--top", "3", "--no_thumbnails"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == f"{synthetic}/reports/dt={NIGHT_A}/report.html" and Path(printed).is_file()
    assert "No earlier night" in Path(printed).read_text()
    assert cli.main(["report", str(synthetic), "--run_date=2026-12-01"]) == 2
    assert "no run for 2026-12-01" in capsys.readouterr().err
    assert cli.main(["report", str(synthetic), "--run_date=28.11.2026"]) == 2
    assert cli.main(["report", str(synthetic), "--top=0"]) == 2


# ---------------------------------------------------------------------------
# Thumbnails: local, http, and every way of not getting one


class _Images(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.server.photo if self.path == "/photo.jpg" else b"gone"
        self.send_response(200 if self.path == "/photo.jpg" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Real photos, always at hand: the sample catalog made from scikit-learn's."""
    catalog = write_sample_catalog(tmp_path_factory.mktemp("photos"), count=3, broken=False)
    return sorted((catalog.parent / "images").glob("*.jpg"))


@pytest.fixture
def image_server(photos):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    server.daemon_threads = True
    server.photo = photos[0].read_bytes()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_thumbnails_and_placeholders(tmp_path, photos, image_server):
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "bomb.png").write_bytes(png_declaring(60000, 60000))
    (tmp_path / "cut.jpg").write_bytes(photos[1].read_bytes()[:3000])
    uris = {
        "local": str(photos[2]),
        "http": f"{image_server}/photo.jpg",
        "missing": str(tmp_path / "nope.jpg"),
        "http404": f"{image_server}/nope.jpg",
        "text": str(tmp_path / "text.jpg"),
        "bomb": str(tmp_path / "bomb.png"),
        "cut": str(tmp_path / "cut.jpg"),
        "refused": "http://127.0.0.1:9/photo.jpg",
    }
    started = time.monotonic()
    found = report.fetch_thumbnails(uris.values(), FetchLimits(connect_timeout=1, read_timeout=1, deadline=2, retries=0, allow_private_hosts=True))
    assert time.monotonic() - started < 10
    for name in ("local", "http"):
        thumb = found[uris[name]]
        assert thumb.problem is None and thumb.data_uri.startswith("data:image/jpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(thumb.data_uri.split(",", 1)[1])))
        assert image.size == report.THUMB_SIZE
        assert len(thumb.data_uri) < 60_000  # small enough to embed dozens
    problems = {name: found[uris[name]].problem for name in uris if name not in ("local", "http")}
    assert problems["missing"] == "NotFound" and problems["http404"] == "NotFound"
    assert problems["text"] == "UnsupportedFormat" and problems["bomb"] == "ImageTooLarge"
    assert problems["refused"] == "ConnectionFailed"
    assert problems["cut"]  # a truncated JPEG: a placeholder, whatever Pillow calls it
    assert all(found[uris[name]].data_uri is None for name in problems)


def test_thumbnails_have_a_total_time_budget(monkeypatch):
    def slow(uri, limits, session):
        time.sleep(0.5)
        return report.Thumbnail(problem="Slow")

    monkeypatch.setattr(report, "_one_thumbnail", slow)
    started = time.monotonic()
    found = report.fetch_thumbnails([f"/x/{i}.jpg" for i in range(20)], workers=2, budget_s=0.8)
    assert time.monotonic() - started < 2
    assert {t.problem for t in found.values()} == {"Slow", "Timeout"}


# ---------------------------------------------------------------------------
# The page in a real browser, over the Chrome DevTools protocol


class Chromium:
    """Headless Debian chromium, driven over CDP on a websocket (one flat session per page)."""

    def __init__(self, profile: Path):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not start (exit {self.proc.poll()})")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30))
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            event = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def open(self, url: str, width: int = 1280, height: int = 900) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        page = Page(self, session, url)
        page.evaluate("document.fonts.ready.then(() => true)")
        return page

    def close(self):
        with contextlib.suppress(Exception):
            self.stack.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Page:
    def __init__(self, browser: Chromium, session: str, url: str):
        self.browser, self.session, self.url = browser, session, url

    def evaluate(self, expression: str):
        result = self.browser.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, self.session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def _events(self, method: str) -> list[dict]:
        return [e["params"] for e in self.browser.events if e.get("method") == method and e.get("sessionId") == self.session]

    def console_errors(self) -> list[str]:
        found = [
            " ".join(str(a.get("value", a.get("description", ""))) for a in e.get("args", []))
            for e in self._events("Runtime.consoleAPICalled") if e.get("type") in ("error", "assert")
        ]
        found += [e["exceptionDetails"].get("text", "") for e in self._events("Runtime.exceptionThrown")]
        found += [e["entry"].get("text", "") for e in self._events("Log.entryAdded") if e["entry"].get("level") == "error"]
        return found

    def requests(self) -> list[str]:
        """Every URL the page asked for, other than itself and data: URIs."""
        urls = [e["request"]["url"] for e in self._events("Network.requestWillBeSent")]
        return [u for u in urls if u != self.url and not u.startswith("data:")]

    def screenshot(self, path: Path) -> Path:
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        self.browser.send("Emulation.setDeviceMetricsOverride",
                          {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False}, self.session)
        shot = self.browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                 self.session)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        message = "Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    browser = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()


_INSPECT = """(() => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  const visible = el => { const s = getComputedStyle(el); const [w, h] = box(el);
                          return w > 0 && h > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const chart = document.querySelector('#distribution svg.chart');
  return {
    histogram: chart ? box(chart) : null,
    bars: [...document.querySelectorAll('#distribution rect.bar')].filter(visible).length,
    images: [...document.querySelectorAll('img.thumb')].map(i => ({
      alt: i.alt, complete: i.complete, natural: [i.naturalWidth, i.naturalHeight], visible: visible(i)})),
    placeholders: [...document.querySelectorAll('.thumb-missing')].map(p => ({
      text: p.textContent, visible: visible(p)})),
    kept: [...document.querySelectorAll('section.kept svg.chart')].filter(visible).length,
    change: !!document.querySelector('#change polyline.previous'),
    header: getComputedStyle(document.querySelector('header')).backgroundColor,
    scripts: document.scripts.length,
  };
})()"""


def test_report_in_headless_chromium(pipeline_nights, chromium, tmp_path):
    images = pipeline_nights["images"]
    # Two of the night's images have gone bad since they were scored.
    (images / "spare-unreachable.jpg").unlink(missing_ok=True)
    (images / "spare-undecodable.jpg").write_bytes(b"\xff\xd8\xff garbage")
    output = pipeline_nights["output"]
    path = report.write_report(str(output), NIGHT_B, top=4)
    assert path == f"{output}/reports/dt={NIGHT_B}/report.html"
    assert os.path.getsize(path) < 1_000_000

    page = chromium.open(Path(path).as_uri())
    found = page.evaluate(_INSPECT)
    shot = page.screenshot(tmp_path / "report.png")
    print(f"screenshot: {shot}")

    assert page.console_errors() == []
    assert page.requests() == []
    assert found["scripts"] == 0 and found["header"] == "rgb(23, 50, 77)"  # the inline CSS applied
    width, height = found["histogram"]
    assert width > 300 and height > 100 and found["bars"] >= 2
    assert found["kept"] >= 2  # per-category histograms
    assert found["change"]  # the previous night's outline
    loaded = [i for i in found["images"] if i["natural"][0] > 0]
    assert len(loaded) >= 4 and all(i["complete"] and i["visible"] for i in found["images"])
    assert all(i["natural"][0] > 0 and i["natural"][1] > 0 for i in found["images"])
    problems = {p["text"] for p in found["placeholders"] if p["visible"]}
    assert any("NotFound" in t for t in problems) and any("CorruptImage" in t or "UnsupportedFormat" in t
                                                          or "OSError" in t for t in problems), problems
    png = Image.open(shot)
    assert png.size[0] == 1280 and png.size[1] > 1500
    assert len(png.convert("RGB").getcolors(1 << 20) or range(1 << 20)) > 500  # a page, not a blank


def test_the_browser_harness_sees_requests_and_console_errors(chromium, tmp_path):
    """The checks above would notice: an external image and a console error on a page
    without the report's Content-Security-Policy."""
    page_file = tmp_path / "leaky.html"
    page_file.write_text('<!DOCTYPE html><img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script>')
    page = chromium.open(page_file.as_uri())
    assert "http://127.0.0.1:9/x.png" in page.requests()
    assert any("boom" in e for e in page.console_errors())


def test_unreadable_tables_are_a_one_line_error(tmp_path, capsys):
    output = tmp_path / "out"
    write_night(output, NIGHT_A, [{"image_id": "a", "mean_score": 5.0}], files=1)
    (output / "scores" / f"dt={NIGHT_A}" / "zz-truncated.parquet").write_bytes(b"PAR1 not really")
    assert cli.main(["report", str(output), f"--run_date={NIGHT_A}"]) == 2
    assert "could not read the tables of 2026-11-27" in capsys.readouterr().err


def test_a_very_large_night_gets_approximate_percentiles(synthetic, monkeypatch):
    monkeypatch.setattr(report, "EXACT_PERCENTILES_UP_TO", 3)  # "very large" = more than 3 rows here
    data = report.collect(str(synthetic), NIGHT_B, thumbnails=False)
    assert data.approximate and data.stats.count == 6
    assert 4.0 <= data.stats.median <= 5.0  # a t-digest estimate, not the exact 4.75
    assert "Percentiles are approximate" in report.render(data)
