"""One night per date, decided at launch (``night_claim``): the claim is taken atomically, a
second run refuses at once naming the holder and the expiry, a dead or expired holder is
taken over, publishing refuses while another run holds the date, and releases its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from gcs_emulator import counting_proxy, gcs  # noqa: F401  (pytest fixture)

from aisthetics_transforms import storage
from aisthetics_transforms.night_claim import DateClaimed, NightClaim, claim_path, read_claim, release_claim

DATE = "2026-11-28"


def test_the_first_run_takes_the_date_and_a_second_refuses_naming_it(tmp_path):
    output = str(tmp_path / "out")
    first = NightClaim(output, DATE, "20261128T010000000000Z-aaaa", ttl_s=120)
    first.take()
    held = read_claim(output, DATE)
    assert held.run_id == first.run_id and held.pid == os.getpid()
    second = NightClaim(output, DATE, "20261128T010001000000Z-bbbb", ttl_s=120)
    with pytest.raises(DateClaimed) as refused:
        second.take()
    message = str(refused.value)
    assert "\n" not in message and first.run_id in message and f"expires at {held.expires_at}" in message
    assert claim_path(output, DATE) in message
    first.take()  # a retry of the same run's launch keeps its claim
    first.release()
    assert read_claim(output, DATE) is None and not (tmp_path / "out" / "_publish").exists()
    second.take()  # free again


def test_many_runs_taking_one_date_at_once_leave_exactly_one_holder(tmp_path):
    output = str(tmp_path / "out")
    won, lost = [], []
    start = threading.Barrier(8)

    def launch(i: int) -> None:
        claim = NightClaim(output, DATE, f"run-{i}", ttl_s=120)
        start.wait()
        try:
            claim.take()
            won.append(claim.run_id)
        except DateClaimed:
            lost.append(i)

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == 7 and read_claim(output, DATE).run_id == won[0]


def test_an_expired_claim_or_a_dead_process_is_taken_over(tmp_path):
    output = str(tmp_path / "out")
    stale = NightClaim(output, DATE, "stale-run", ttl_s=0.05)
    stale.take()
    time.sleep(0.1)
    NightClaim(output, DATE, "next-run", ttl_s=120).take()
    assert read_claim(output, DATE).run_id == "next-run"
    # a process of this host that is gone: taken over at once, however long its claim had left
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    path = claim_path(output, DATE)
    claim = {**json.loads(storage.read_bytes(path)), "run_id": "dead-run", "pid": int(dead.stdout)}
    storage.write_atomic(path, json.dumps(claim).encode())
    NightClaim(output, DATE, "after-the-dead", ttl_s=120).take()
    assert read_claim(output, DATE).run_id == "after-the-dead"


def test_a_kept_claim_is_renewed_and_one_taken_over_is_not_overwritten(tmp_path):
    output = str(tmp_path / "out")
    claim = NightClaim(output, DATE, "keeper", ttl_s=0.4)
    claim.take()
    first = read_claim(output, DATE)
    claim.keep()
    try:
        time.sleep(0.5)
        renewed = read_claim(output, DATE)
        assert renewed.run_id == "keeper" and renewed.expires_at > first.expires_at
        assert not renewed.expired(datetime.now(UTC))
    finally:
        claim.stop_keeping()
    storage.write_atomic(claim_path(output, DATE), json.dumps({**renewed._asdict(), "run_id": "other"}).encode())
    assert claim.renew() is False and read_claim(output, DATE).run_id == "other"
    release_claim(output, DATE, "keeper")  # not its own: left alone
    assert read_claim(output, DATE).run_id == "other"
    release_claim(output, DATE, "other")  # released (its night published): a renewal does not bring it back
    assert claim.renew() is False and read_claim(output, DATE) is None


def test_a_claim_left_running_lasts_its_hold(tmp_path):
    output = str(tmp_path / "out")
    NightClaim(output, DATE, "left-running", ttl_s=120, hold_s=6 * 3600).take()
    held = read_claim(output, DATE)
    lasts = datetime.fromisoformat(held.expires_at) - datetime.fromisoformat(held.taken_at)
    assert lasts == timedelta(hours=6)


@pytest.mark.slow  # the GCS emulator
def test_a_claim_on_gcs_is_taken_read_renewed_and_released(gcs, monkeypatch):
    with counting_proxy(gcs.host) as proxy:  # GCS's preconditions, which the emulator ignores
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.host)
        one_claim_on_gcs(gcs.uri(f"claims-{time.monotonic_ns()}/out"))
        uploads = [path for method, path in proxy.requests if path.startswith("/upload/")]
        assert uploads and all("ifGenerationMatch=" in path for path in uploads)  # every write conditional


def one_claim_on_gcs(output: str) -> None:
    claim = NightClaim(output, DATE, "gcs-run", ttl_s=120)
    claim.take()
    held = read_claim(output, DATE)
    assert held.run_id == "gcs-run"
    with pytest.raises(DateClaimed):
        NightClaim(output, DATE, "gcs-other", ttl_s=120).take()
    assert claim.renew() and read_claim(output, DATE).expires_at >= held.expires_at
    claim.release()
    assert read_claim(output, DATE) is None
