"""`aisthetics report`: the numbers it computes, its axis ticks, its thumbnails and
placeholders, its escaping and its one-line errors. The page in a real browser is
test_report_browser.py."""

from __future__ import annotations

import base64
import html.parser
import io
import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from test_queries import NIGHT_A, NIGHT_B, synthetic_two_nights, write_night
from test_scoring import png_declaring

from aisthetics_transforms import cli, report
from aisthetics_transforms.fetch import FetchLimits
from aisthetics_transforms.report import aggregates, charts, thumbnails
from aisthetics_transforms.sample import write_sample_catalog

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
    assert (c.failing, c.recovered) == (0, 0)  # no image is scored on one night and an error row on the other
    assert c.mean_change_in_both == pytest.approx((0.5 - 2.0) / 4)
    assert [(m.image_id, m.before, m.mean_score) for m in c.movers] == [("a3", 6.0, 4.0), ("a1", 4.0, 4.5)]
    assert [(m.uri, m.kept) for m in c.movers] == [
        ("/catalog/a3.jpg", {"category": "bags"}),
        ("/catalog/a1.jpg", {"category": "shoes"}),
    ]
    assert c.histogram.total == 5 and c.stats.mean == pytest.approx(5.5)
    assert data.summary["reused"] == 2


def decimals(labels) -> set[int]:
    """How many decimals the labels are written with (one number, when they agree)."""
    return {len(label.partition(".")[2]) for label in labels}


@pytest.mark.parametrize("low, high", [(5.21, 5.87), (4.0, 4.1), (2.0, 8.5), (5.5, 7.2), (None, None)])
def test_x_axis_ticks_are_round_evenly_spaced_and_few_enough_to_read(low, high):
    lo, width, n = aggregates.choose_bins(low, high)
    for most, fewest in ((charts.MAX_X_TICKS, 5), (charts.MAX_X_TICKS_COMPACT, 3)):
        ticks = charts.score_ticks(lo, lo + width * n, most)
        assert fewest <= len(ticks) <= most, ticks
        assert lo - 1e-9 <= ticks[0] and ticks[-1] <= lo + width * n + 1e-9
        assert len({round(b - a, 6) for a, b in itertools.pairwise(ticks)}) == 1
        labels = charts.tick_labels(ticks)
        assert [float(t) for t in labels] == pytest.approx(ticks) and len(decimals(labels)) == 1


def test_gone_means_no_longer_in_the_manifest(tmp_path):
    """An image scored before whose row is an error row tonight (its file deleted, say)
    is failing, not gone; one that was an error row and is scored now is not new."""
    output = tmp_path / "out"
    write_night(
        output,
        NIGHT_A,
        [{"image_id": i, "mean_score": 5.0} for i in ("kept", "deleted", "dropped", "duplicated")],
        [{"image_id": "fixed", "stage": "fetch", "error_type": "NotFound"}],
    )
    write_night(
        output,
        NIGHT_B,
        [{"image_id": i, "mean_score": 6.0} for i in ("kept", "duplicated", "fixed", "brand-new")],
        [
            {"image_id": "deleted", "stage": "fetch", "error_type": "NotFound"},
            # a second row with an id that is scored tonight: the id is still scored
            {"image_id": "duplicated", "stage": "manifest", "error_type": "DuplicateImageId"},
        ],
    )
    c = report.collect(str(output), NIGHT_B, thumbnails=False).comparison
    assert (c.in_both, c.removed, c.failing, c.added, c.recovered) == (2, 1, 1, 1, 1)
    # Each image scored on either night is in exactly one count.
    assert c.in_both + c.removed + c.failing == 4 and c.in_both + c.added + c.recovered == 4


def test_kept_columns_are_the_extra_string_columns(tmp_path):
    output = tmp_path / "out"
    write_night(
        output,
        NIGHT_A,
        [{"image_id": "x", "mean_score": 5.0, "category": "c", "seller": "s"}],
        keep=("category", "seller"),
        files=1,
    )
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
    assert page.count('class="thumb-missing"') == 3 + 1  # three images, one mover (a2)
    assert "NotFound" in page
    assert "Change since 2026-11-28" in page and "By category" in page
    assert '<div class="id">a2</div><div class="kv">/catalog/a2.jpg</div><div class="kv">category: shoes</div>' in page


def test_a_night_with_no_scores_still_renders(tmp_path):
    output = tmp_path / "out"
    write_night(
        output,
        NIGHT_A,
        [],
        [{"image_id": "e", "stage": "fetch", "error_type": "NotFound"}],
        {"rows": 1, "scored": 0, "reused": 0, "errors": 1, "model_version": "m"},
        files=1,
    )
    page = Path(report.write_report(str(output), NIGHT_A)).read_text()
    assert page.count("No scored images") == 1 and "NotFound" in page  # said once, by the distribution
    assert 'id="top"' not in page and 'class="gallery"' not in page
    # No scores file at all: the table reads as empty, with the pipeline's columns.
    for empty in (output / "scores" / f"dt={NIGHT_A}").iterdir():
        empty.unlink()
    data = report.collect(str(output), NIGHT_A, thumbnails=False)
    assert (data.table_rows, data.stats.count, data.error_rows, data.top) == (0, 0, 1, [])


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


def test_cli_prints_the_pages_absolute_path_for_a_relative_output(synthetic, capsys, monkeypatch):
    monkeypatch.chdir(synthetic.parent)
    assert cli.main(["report", synthetic.name, f"--run_date={NIGHT_A}", "--no_thumbnails"]) == 0
    assert capsys.readouterr().out.strip() == f"{synthetic}/reports/dt={NIGHT_A}/report.html"


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
    found = report.fetch_thumbnails(
        uris.values(), FetchLimits(connect_timeout=1, read_timeout=1, deadline=2, retries=0, allow_private_hosts=True)
    )
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

    monkeypatch.setattr(thumbnails, "one_thumbnail", slow)
    started = time.monotonic()
    found = report.fetch_thumbnails([f"/x/{i}.jpg" for i in range(20)], workers=2, budget_s=0.8)
    assert time.monotonic() - started < 2
    assert {t.problem for t in found.values()} == {"Slow", "Timeout"}


def test_unreadable_tables_are_a_one_line_error(tmp_path, capsys):
    output = tmp_path / "out"
    write_night(output, NIGHT_A, [{"image_id": "a", "mean_score": 5.0}], files=1)
    (output / "scores" / f"dt={NIGHT_A}" / "zz-truncated.parquet").write_bytes(b"PAR1 not really")
    assert cli.main(["report", str(output), f"--run_date={NIGHT_A}"]) == 2
    assert "could not read the tables of 2026-11-27" in capsys.readouterr().err


def test_a_very_large_night_gets_approximate_percentiles(synthetic, monkeypatch):
    monkeypatch.setattr(aggregates, "EXACT_PERCENTILES_UP_TO", 3)  # "very large" = more than 3 rows here
    data = report.collect(str(synthetic), NIGHT_B, thumbnails=False)
    assert data.approximate and data.stats.count == 6
    assert 4.0 <= data.stats.median <= 5.0  # a t-digest estimate, not the exact 4.75
    assert "Percentiles are approximate" in report.render(data)
