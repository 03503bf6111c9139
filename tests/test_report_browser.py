"""The report page in a real headless Chromium: no console errors, no request leaving the
page, charts and thumbnails visible, an x axis that agrees with its colour key, and the
counts of a night whose data changed since the one before."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from headless_chromium import Chromium, chromium_binary
from PIL import Image
from test_queries import NIGHT_A, NIGHT_B, pipeline_nights, write_night  # noqa: F401 (a fixture)
from test_report import decimals

from aisthetics_transforms import report
from aisthetics_transforms.report import charts

pytestmark = pytest.mark.browser


# Set by .ci/run, which installs chromium: there a missing browser fails the tests, never skips them.
REQUIRE_BROWSER = "AISTHETICS_REQUIRE_BROWSER"


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    if not chromium_binary():
        missing = "Debian's chromium is not installed: apt-get install chromium (as root) to run the browser tests"
        if os.environ.get(REQUIRE_BROWSER):
            pytest.fail(f"{missing} ({REQUIRE_BROWSER} is set: CI must run them)")
        pytest.skip(missing)
    browser = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()


_INSPECT = """(() => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  const span = el => { const r = el.getBoundingClientRect(); return {left: r.left, right: r.right}; };
  const axisOf = chart => ({
    line: span(chart.querySelector('line.axis')),
    ticks: [...chart.querySelectorAll('text.tick.x')].map(t => ({text: t.textContent, ...span(t)})),
    key: [...chart.querySelectorAll('g.scale rect')].map(r => ({fill: getComputedStyle(r).fill, ...span(r)})),
    bars: [...chart.querySelectorAll('rect.bar')].map(r => ({fill: getComputedStyle(r).fill, ...span(r)})),
  });
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
    axis: chart && axisOf(chart),
    legends: document.querySelectorAll('svg.legend').length,
    flows: Object.fromEntries([...document.querySelectorAll('#change .flows .stat')].map(
      s => [s.firstChild.textContent.trim(), s.querySelector('b').textContent])),
    noScores: document.body.innerText.split('No scored images').length - 1,
    galleries: document.querySelectorAll('.gallery').length,
  };
})()"""


@pytest.mark.slow  # two nights of the real pipeline (shared with test_queries)
def test_report_in_headless_chromium(pipeline_nights, chromium, tmp_path):  # noqa: F811 (the imported fixture)
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
    assert any("NotFound" in t for t in problems) and any(
        "CorruptImage" in t or "UnsupportedFormat" in t or "OSError" in t for t in problems
    ), problems
    png = Image.open(shot)
    assert png.size[0] == 1280 and png.size[1] > 1500
    assert len(png.convert("RGB").getcolors(1 << 20) or range(1 << 20)) > 500  # a page, not a blank

    # The x axis and the colour key agree: one key, under the axis, labelled by the axis.
    assert found["legends"] == 0
    check_axis_and_colour_key(found["axis"], report.collect(str(output), NIGHT_B, thumbnails=False).histogram)
    # Where night A's and night B's images went: DELETED's file is gone but its row is an
    # error row tonight, so it is failing, not gone; only DROPPED left the manifest.
    assert found["flows"] == {"new": "3", "gone from the manifest": "1", "now failing": "1", "scored again": "1"}
    assert found["noScores"] == 0 and found["galleries"] == 2


def _rgb(color: str) -> str:
    return "rgb({}, {}, {})".format(*(int(color[i : i + 2], 16) for i in (1, 3, 5)))


def check_axis_and_colour_key(axis: dict, histogram) -> None:
    """The x axis as laid out in the browser: enough readable labels, and a colour key
    that spans exactly the axis and gives each labelled score the colour its bar gets."""
    ticks, key, line = axis["ticks"], axis["key"], axis["line"]
    values = [float(t["text"]) for t in ticks]
    assert len(ticks) >= 5, values
    steps = {round(b - a, 6) for a, b in itertools.pairwise(values)}
    assert len(steps) == 1 and steps.pop() > 0, values  # evenly spaced, increasing
    assert len(decimals(t["text"] for t in ticks)) == 1
    for a, b in itertools.pairwise(ticks):
        assert a["right"] + 4 <= b["left"], (a, b)  # labels do not touch
    assert len(key) == len(histogram.counts)
    assert abs(key[0]["left"] - line["left"]) < 1.5 and abs(key[-1]["right"] - line["right"]) < 1.5
    assert all(abs(a["right"] - b["left"]) < 0.6 for a, b in itertools.pairwise(key))  # one unbroken band
    for tick, value in zip(ticks, values, strict=True):
        centre = (tick["left"] + tick["right"]) / 2
        assert line["left"] - 0.5 <= centre <= line["right"] + 0.5, tick  # every label is on the key
        under = [k for k in key if k["left"] <= centre + 1 < k["right"]]
        if under:  # (the last label may sit at the key's right end)
            i = int((value - histogram.lo) / histogram.width + 1e-9)
            assert under[0]["fill"] == _rgb(charts.score_color(sum(histogram.edges(i)) / 2)), (value, under[0])
    for bar in axis["bars"]:  # each bar has the colour of the key beneath it
        centre = (bar["left"] + bar["right"]) / 2
        [beneath] = [k for k in key if k["left"] <= centre < k["right"]]
        assert bar["fill"] == beneath["fill"]


def test_a_night_without_scores_in_headless_chromium(chromium, tmp_path):
    """An all-error night: "No scored images" said once, no empty galleries, no errors."""
    output = tmp_path / "out"
    write_night(output, NIGHT_A, [{"image_id": "a", "mean_score": 5.0}], files=1)
    write_night(
        output,
        NIGHT_B,
        [],
        [
            {"image_id": "a", "stage": "fetch", "error_type": "NotFound"},
            {"image_id": "b", "stage": "decode", "error_type": "CorruptImage"},
        ],
        {"rows": 2, "scored": 0, "reused": 0, "errors": 2, "model_version": "m"},
        files=1,
    )
    page = chromium.open(Path(report.write_report(str(output), NIGHT_B)).as_uri())
    found = page.evaluate(_INSPECT)
    assert page.console_errors() == [] and page.requests() == []
    assert found["noScores"] == 1 and found["galleries"] == 0 and found["histogram"] is None
    assert found["flows"] == {"new": "0", "gone from the manifest": "0", "now failing": "1", "scored again": "0"}


def test_the_browser_harness_sees_requests_and_console_errors(chromium, tmp_path):
    """The checks above would notice: an external image and a console error on a page
    without the report's Content-Security-Policy."""
    page_file = tmp_path / "leaky.html"
    page_file.write_text('<!DOCTYPE html><img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script>')
    page = chromium.open(page_file.as_uri())
    assert "http://127.0.0.1:9/x.png" in page.requests()
    assert any("boom" in e for e in page.console_errors())
