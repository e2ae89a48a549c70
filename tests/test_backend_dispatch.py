"""Open-loop dispatch of the real backend: schedule, concurrency cap, warm-up, duration,
drain limit, worker processes. Against the local fake server (no timing thresholds: only
causal facts such as "never sent before its arrival time")."""

import asyncio
import time

import numpy as np
import pytest

from twinbench.backends.base import ReplayOptions
from twinbench.backends.openai import OpenAIBackend, OpenAIConfig
from twinbench.replay.dispatch import (DispatchSettings, DispatchStats, connections_to_warm,
                                       dispatch)
from twinbench.replay.run import replay_to_file, replay_to_list
from twinbench.reports.runfile import read_run
from twinbench.traces.core import Adapter, Trace


@pytest.fixture(scope="module")
def server(fake_server):
    srv = fake_server(token_delay_s=0.01).start()
    yield srv
    srv.stop()


def _trace(arrivals, output=4, adapters=None):
    n = len(arrivals)
    idx = np.full(n, -1) if adapters is None else np.array(adapters)
    return Trace(arrival_s=np.array(arrivals, dtype=float), adapter_idx=idx,
                 prompt_tokens=np.full(n, 16), output_tokens=np.full(n, output),
                 adapters=[Adapter("a0"), Adapter("hang")])


def test_requests_go_out_at_their_arrival_times_and_lag_is_recorded(server):
    arrivals = [0.0, 0.0, 0.05, 0.1, 0.1, 0.1, 0.3]
    before = len(server.received)
    backend = OpenAIBackend(OpenAIConfig(base_url=server.url, scrape_interval_s=0))
    records, info = replay_to_list(_trace(arrivals, output=100), backend,
                                   ReplayOptions(quiet=True))
    origin = info.extra["dispatch_origin_perf_counter_s"]
    assert sorted(r.arrival_s for r in records) == arrivals
    for r in records:
        assert r.status == "ok" and r.client_queue_s == 0.0
        assert r.sent_s >= r.arrival_s  # never early; the lag is kept, not hidden
    # the server saw each request after its scheduled time, in schedule order
    received = sorted(t - origin for t, _, _ in server.received[before:])
    assert len(received) == len(arrivals)
    assert all(t >= a for t, a in zip(received, arrivals))
    # open loop: the request at 0.05 s went out before the two at 0 s finished
    first = [r for r in records if r.arrival_s == 0.0]
    later = next(r for r in records if r.arrival_s == 0.05)
    assert later.sent_s < min(r.end_s for r in first)


def test_concurrency_cap_queues_on_the_client(server):
    server.peak_running = 0
    backend = OpenAIBackend(OpenAIConfig(base_url=server.url, scrape_interval_s=0,
                                         max_concurrency=2))
    records, info = replay_to_list(_trace([0.0] * 6, output=5), backend,
                                   ReplayOptions(quiet=True))
    assert info.extra["max_concurrency"] == 2 and server.peak_running == 2
    assert all(r.status == "ok" for r in records)
    by_send = sorted(records, key=lambda r: r.sent_s)
    first_two_end = min(r.end_s for r in by_send[:2])
    for r in by_send[2:]:  # the other four waited for a slot: sent after one freed
        assert r.sent_s >= first_two_end
        assert r.client_queue_s > 0.0
    for r in records:  # and the wait is client_queue_s, not dispatch lag
        assert r.sent_s >= r.arrival_s + r.client_queue_s


def test_warmup_duration_and_drain_limit(server, tmp_path):
    # rows 0-1 warm-up; row 2 hangs past the drain limit; rows at >= 0.5 s are never sent
    arrivals = [0.0, 0.0, 0.01, 0.02, 0.6, 0.7]
    trace = _trace(arrivals, adapters=[-1, -1, 1, 0, -1, 0])
    before = len(server.received)
    out = tmp_path / "run.jsonl"
    backend = OpenAIBackend(OpenAIConfig(base_url=server.url, scrape_interval_s=0))
    info, status, _ = replay_to_file(
        trace, backend, ReplayOptions(quiet=True, warmup_requests=2, duration_s=0.5,
                                      drain_limit_s=0.4), out)
    run = read_run(out)
    assert status == "complete" and run.footer["status"] == "complete"
    by = {r.id: r for r in run.records}
    assert len(by) == 6
    assert [by[str(i)].warmup for i in range(6)] == [True, True, False, False, False, False]
    assert by["2"].status == "unfinished" and "drain limit" in by["2"].error
    assert len(by["2"].chunk_times) == 1  # the chunk it got before hanging is kept
    for i in ("4", "5"):
        assert by[i].status == "cancelled" and by[i].sent_s is None and "--duration" in by[i].error
    assert len(server.received) - before == 4
    assert info.extra["drained_out"] == 1 and info.extra["not_sent_after_duration"] == 2


def test_two_worker_processes_share_one_schedule(server, tmp_path):
    arrivals = list(np.arange(40) * 0.01)
    out = tmp_path / "run.jsonl"
    backend = OpenAIBackend(OpenAIConfig(base_url=server.url, scrape_interval_s=0.2,
                                         workers=2))
    before = len(server.received)
    info, status, _ = replay_to_file(_trace(arrivals, output=3), backend,
                                     ReplayOptions(quiet=True), out)
    run = read_run(out)
    assert status == "complete" and len(run.records) == 40 and not run.partial
    assert all(r.status == "ok" and r.output_tokens == 3 for r in run.records)
    assert all(r.sent_s >= r.arrival_s for r in run.records)
    assert len(backend.worker_pids) == 1 and info.extra["workers"] == 2
    assert len(server.received) - before == 40
    assert run.samples  # only the parent scrapes and writes


class _BeginSender:
    """A sender that starts requests from the dispatcher's timer (`begin`); row 1's body
    cannot be built."""

    def __init__(self):
        self.begun = []

    def begin(self, row, attempt):
        if row == 1:
            raise RuntimeError("body failed")
        attempt.sent = time.perf_counter()
        self.begun.append(row)
        return self._rest(attempt)

    async def _rest(self, attempt):
        await asyncio.sleep(0.01)
        attempt.stamps.append(time.perf_counter())
        attempt.tokens.append(1)
        attempt.status = "ok"

    async def send(self, row, attempt):
        await self.begin(row, attempt)


def test_a_sender_begun_from_the_timer_keeps_the_schedule_and_reports_a_failed_begin():
    arrivals = np.array([0.0, 0.01, 0.02, 0.02, 0.05])
    sender, done = _BeginSender(), []

    async def go():
        origin = time.perf_counter() + 0.01
        await dispatch(np.arange(5), arrivals, sender, origin, DispatchSettings(),
                       asyncio.Event(), done.append, DispatchStats())
        return origin

    origin = asyncio.run(go())
    assert sender.begun == [0, 2, 3, 4]  # in schedule order, the failed one skipped
    by_row = {a.row: a for a in done}
    assert sorted(by_row) == [0, 1, 2, 3, 4] and len(done) == 5
    assert by_row[1].status == "error"
    assert by_row[1].error == "client error: RuntimeError: body failed"
    for row in (0, 2, 3, 4):
        a = by_row[row]
        assert a.status == "ok" and a.done
        assert a.sent >= origin + arrivals[row]  # never early


def test_connections_opened_ahead_cover_the_first_second_within_the_caps():
    arrivals = np.array([10.0, 10.5, 10.9, 11.0, 11.5, 13.0, 0.0])
    rows = np.array([0, 1, 2, 3, 4, 5])  # a share, in arrival order (row 6 is another's)
    assert connections_to_warm(rows, arrivals, None) == 4  # 10.0 .. 11.0 inclusive
    assert connections_to_warm(rows, arrivals, 2) == 2     # never more than the cap
    assert connections_to_warm(rows[:0], arrivals, None) == 0
    many = np.zeros(5000)
    assert connections_to_warm(np.arange(5000), many, None) == 512
