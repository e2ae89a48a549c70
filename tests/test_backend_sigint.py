"""SIGINT on a live real-backend run (in a subprocess): the run file is complete up to the
interruption — header, every finished record, in-flight requests as cancelled with what
they measured, never-sent ones as cancelled, and a footer saying `interrupted`."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twinbench.reports.runfile import read_run


SCRIPT = """
import sys
import numpy as np
from twinbench.backends.base import ReplayOptions
from twinbench.backends.openai import OpenAIBackend, OpenAIConfig
from twinbench.replay.run import replay_to_file
from twinbench.traces.core import Trace

if __name__ == "__main__":  # worker processes are spawned: they re-import this file
    url, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    n = 30
    output = np.full(n, 200)
    output[:4] = 2  # the first four finish at once; the others stream for seconds
    trace = Trace(arrival_s=np.arange(n) * 0.05, adapter_idx=np.full(n, -1),
                  prompt_tokens=np.full(n, 10), output_tokens=output)
    backend = OpenAIBackend(OpenAIConfig(base_url=url, workers=workers, stop_grace_s=0.3,
                                         scrape_interval_s=0.1))
    info, status, sink = replay_to_file(trace, backend, ReplayOptions(quiet=True), out)
    print(status, flush=True)
"""


@pytest.fixture(scope="module")
def server(fake_server):
    srv = fake_server(token_delay_s=0.02).start()
    yield srv
    srv.stop()


def _records_in(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"kind":"record"' in line)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigint_leaves_a_complete_run_file(server, tmp_path, workers):
    script = tmp_path / "run_it.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), server.url, str(out), str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while _records_in(out) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert _records_in(out) >= 4, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.2)  # some requests are now in flight, later ones not yet sent
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert stdout.strip() == "interrupted"
    run = read_run(out)
    assert run.partial_reason is None  # every line complete
    assert run.footer is not None and run.footer["status"] == "interrupted"
    assert len(run.records) == 30 and len({r.id for r in run.records}) == 30
    status = {r.id: r.status for r in run.records}
    assert all(status[str(i)] == "ok" for i in range(4))
    in_flight = [r for r in run.records if r.status == "cancelled" and r.sent_s is not None]
    never_sent = [r for r in run.records if r.status == "cancelled" and r.sent_s is None]
    assert in_flight and never_sent
    assert set(status.values()) == {"ok", "cancelled"}
    for r in in_flight:  # what they measured before the stop is kept
        assert "interrupted" in r.error
        assert r.first_token_s is None or r.first_token_s == r.chunk_times[0]
    assert any(len(r.chunk_times) >= 1 for r in in_flight)
    assert max(r.arrival_s for r in in_flight) < min(r.arrival_s for r in never_sent)
    assert run.info.get("backend") == "openai"
    assert run.info["extra"]["cancelled_in_flight"] == len(in_flight)
