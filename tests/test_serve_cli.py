"""`twinbench serve`: user errors are one line and exit 2; a client that goes away is aborted;
a request that reaches a client-clock twin too late is entered late and says so."""
from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from twinbench.cli.main import main

PROFILE = "llama-3.1-8b-h100"


@pytest.mark.parametrize("argv, needle", [
    (["serve", "--profile", "no-such-profile"], "--profile no-such-profile"),
    (["serve", "--profile", PROFILE, "--speed", "0"], "--speed"),
    (["serve", "--profile", PROFILE, "--lora-modules", "a=/no/such/dir"], "--lora-modules"),
    (["serve", "--profile", PROFILE, "--lora-modules", "a", "a"], "repeat"),
    (["serve", "--profile", PROFILE, "--lora-modules", '{"name": "a", "rank": 64}'],
     "max_lora_rank"),
    (["serve", "--profile", PROFILE, "--max-loras", "4", "--max-cpu-loras", "2"],
     "--max-cpu-loras"),
])
def test_user_errors_exit_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def running_requests(base_url: str) -> float:
    text = urllib.request.urlopen(base_url + "/metrics", timeout=10).read().decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == "vllm:num_requests_running":
            return sum(s.value for s in fam.samples)
    raise AssertionError("no vllm:num_requests_running")


def open_long_stream(base_url: str):
    """A raw streamed 4000-token completion, read up to its first token: (connection,
    response), so a test can drop the client or stop the server mid-stream."""
    url = urllib.parse.urlparse(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(
        {"prompt": [1] * 10, "max_tokens": 4000, "stream": True}),
        {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: {")  # the first token arrived
    return conn, resp


def test_disconnected_stream_is_aborted(twin_server_launcher):
    base_url = twin_server_launcher("--profile", PROFILE, "--max-model-len", "4096")
    conn, _ = open_long_stream(base_url)
    assert running_requests(base_url) == 1
    conn.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 20
    while running_requests(base_url) != 0:  # the twin drops it at its next token
        assert time.monotonic() < deadline, "the twin kept generating for a closed stream"
        time.sleep(0.05)


def test_late_client_clock_request_is_flagged(twin_server_launcher):
    base_url = twin_server_launcher("--profile", PROFILE, "--max-model-len", "4096",
                                    "--client-clock-slack-ms", "50")

    def complete(arrival_s: float, max_tokens: int) -> dict:
        req = urllib.request.Request(base_url + "/v1/completions", data=json.dumps(
            {"prompt": [1] * 8, "max_tokens": max_tokens, "twin_arrival_s": arrival_s}).encode(),
            headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=60).read())["twin"]

    import threading

    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(complete(0.0, 300)))
    worker.start()  # starts a client-clock epoch at 0 s and keeps the twin busy
    deadline = time.monotonic() + 20
    while running_requests(base_url) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # its clock is now well past 0.01 s + the 50 ms slack
    late = complete(0.01, 2)  # claims to have arrived 10 ms into that clock
    worker.join()
    assert first["arrival_ns"] == 0 and "arrival_late_ns" not in first
    assert late["epoch"] == first["epoch"]
    assert late["arrival_late_ns"] > 0
    assert late["arrival_ns"] == 10_000_000 + late["arrival_late_ns"]


def test_speed_changes_wall_time_not_simulated_time(twin_server_launcher):
    """At --speed 50 a request's simulated times are still exactly the in-process twin's."""
    import numpy as np

    from twinbench.traces.core import Request, Trace
    from twinbench.twin.simulation import simulate
    from twinbench.twin.config import ServerConfig

    base_url = twin_server_launcher("--profile", PROFILE, "--max-model-len", "4096",
                                    "--speed", "50")
    req = urllib.request.Request(base_url + "/v1/completions", data=json.dumps(
        {"prompt": [7] * 300, "max_tokens": 200, "twin_arrival_s": 0.0}).encode(),
        headers={"Content-Type": "application/json"})
    twin = json.loads(urllib.request.urlopen(req, timeout=60).read())["twin"]
    trace = Trace.from_requests([Request("r", 0.0, None, 300, 200)])
    rec = simulate(trace, ServerConfig(max_model_len=4096), PROFILE).records[0]
    assert twin["token_times_ns"] == np.rint(rec.chunk_times * 1e9).astype(np.int64).tolist()


def test_sigterm_ends_in_flight_streams_and_exits(twin_server_launcher):
    base_url = twin_server_launcher("--profile", PROFILE, "--max-model-len", "4096")
    proc = twin_server_launcher.procs[-1]
    _, resp = open_long_stream(base_url)
    proc.terminate()
    assert proc.wait(timeout=20) == 0  # no wait for the 4000-token generation
    rest = resp.read().decode()
    assert '"code": 503' in rest and rest.rstrip().endswith("data: [DONE]")


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="incremental collector: no policy")
def test_full_collections_wait_until_the_server_is_idle():
    import asyncio
    import gc

    from twinbench.traces.gcpause import IdleFullCollections

    busy = {"on": False}

    def promote() -> None:
        for _ in range(12):
            gc.collect(1)  # young collections: promote enough to make a full one due

    async def scenario() -> dict:
        # max_defer_s: a full collection at the latest after this much *busy* time
        policy = IdleFullCollections(lambda: not busy["on"], check_s=0.01, max_defer_s=0.5)
        policy.start()
        seen = {}
        try:
            assert gc.get_threshold()[2] > 10**6  # no automatic full collection
            await asyncio.sleep(0.8)  # idle for longer than max_defer_s, nothing due
            seen["idle, nothing due"] = policy.full_collections
            busy["on"] = True
            promote()
            await asyncio.sleep(0.1)  # busy, a collection due, but not busy for max_defer_s
            seen["busy"] = policy.full_collections
            await asyncio.sleep(0.6)  # busy for longer than max_defer_s
            seen["busy past the limit"] = policy.full_collections
            promote()
            busy["on"] = False
            await asyncio.sleep(0.2)
            seen["idle again"] = policy.full_collections
            seen["promoted"] = gc.get_count()[2]
        finally:
            policy.stop()
        return seen

    before = gc.get_threshold()
    seen = asyncio.run(scenario())
    assert seen["idle, nothing due"] == 0 and seen["busy"] == 0, seen
    assert seen["busy past the limit"] == 1 and seen["idle again"] == 2, seen
    assert seen["promoted"] < 10
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
