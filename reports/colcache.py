"""A binary column cache beside a large run file, so a second report of it skips the JSON.

Parsing a run file is bounded by its JSON: ~6-9 us per record line with orjson, plus the
base64 of the chunk arrays, plus the first touch of the memory the parse fills. For 10^6
records of 100 chunks that is ~25-30 s, every time. The first read of a large run file
(>= `MIN_BYTES`) therefore leaves the finished `RequestTable` beside it, in
`.<name>.cols` (hidden, so `runs/*` globs do not pick it up): one JSON header, then every
column as raw little-endian bytes at 64-byte-aligned offsets. Later reads map that file
(copy-on-write: nothing here writes into a table, and a write would not reach the file) and
build the table from views of it, with no parse and no copy.

The cache is only used while it matches its run file: the run file's size, modification
time and a hash of its first and last 64 KiB are in the header (a run still being written
grows, so its cache goes stale and is rebuilt). Anything wrong with the cache (missing,
stale, cut short, another format version) means reading the run file as if there were no
cache. Writing it is best effort: a read-only folder or a full disk leaves no cache (and no
half-written file), never a failed report. The run file itself is never touched.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from typing import Any

import numpy as np

from twinbench.reports.load import LoadedRun
from twinbench.reports.table import RequestTable

FORMAT = "twinbench-cols/1"
MAGIC = b"TWINBENCH-COLS/1"
MIN_BYTES = 32 << 20   # smaller run files parse in well under a second: no cache
_ALIGN = 64
_PROBE = 1 << 16

# RequestTable's array fields (None allowed for the optional ones)
_ARRAYS = ("adapter_idx", "warmup", "status", "arrival_s", "client_queue_s", "sent_s",
           "first_token_s", "end_s", "ttft_s", "e2el_s", "prompt_tokens",
           "requested_output_tokens", "output_tokens", "chunk_start", "chunk_t", "chunk_n",
           "gap_s")
_LOADED_META = ("label", "source", "header", "footer", "partial_reason", "samples",
                "sketches", "vllm")


def cache_path(run_path: str) -> str:
    folder, name = os.path.split(os.path.abspath(run_path))
    return os.path.join(folder, f".{name}.cols")


def source_identity(run_path: str) -> dict:
    """What must not change for the cache to stay valid."""
    st = os.stat(run_path)
    h = hashlib.sha256()
    with open(run_path, "rb") as f:
        h.update(f.read(_PROBE))
        if st.st_size > _PROBE:
            f.seek(max(_PROBE, st.st_size - _PROBE))
            h.update(f.read(_PROBE))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "probe_sha256": h.hexdigest()}


def load_cached(run_path: str) -> LoadedRun | None:
    """The cached table of `run_path`, or None when there is no valid cache."""
    path = cache_path(run_path)
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        try:
            head = f.read(len(MAGIC) + 8)
            if len(head) < len(MAGIC) + 8 or not head.startswith(MAGIC):
                return None
            (hlen,) = struct.unpack("<Q", head[len(MAGIC):])
            meta = json.loads(f.read(hlen))
            if meta.get("format") != FORMAT or meta.get("source") != source_identity(run_path):
                return None
            size = os.fstat(f.fileno()).st_size
            arrays = meta["arrays"]
            start = _aligned(len(MAGIC) + 8 + hlen)
            if any(start + off + nbytes > size for _, _, off, nbytes in arrays.values()):
                return None   # cut short
            buf = _map(f.fileno(), size)
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            return None
    cols: dict[str, Any] = {name: None for name in _ARRAYS}
    for name, (dtype, count, off, _nbytes) in arrays.items():
        cols[name] = np.frombuffer(buf, dtype=np.dtype(dtype), count=count, offset=start + off)
    t = meta["table"]
    ids = np.empty(t["n"], dtype=object)
    if t["n"]:
        ids[:] = bytes(cols.pop("ids_utf8")).decode("utf-8").split("\0")
    else:
        cols.pop("ids_utf8", None)
    errors: list[str | None] = [None] * t["n"] if t["errors"] else []
    for i, text in t["errors"]:
        errors[i] = text
    table = RequestTable(ids=ids, adapters=t["adapters"], timing=t["timing"],
                         origin_s=t["origin_s"], duration_s=t["duration_s"], errors=errors,
                         **cols)
    return LoadedRun(table=table, path=run_path, **meta["loaded"])


def _map(fd: int, size: int) -> mmap.mmap:
    """A private (copy-on-write) mapping of the whole file, its pages faulted in by the
    one call where Linux allows (MAP_POPULATE): page by page costs far more on a VM."""
    flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def save_cache(run_path: str, loaded: LoadedRun, identity: dict) -> str | None:
    """Write the cache of `loaded` (read from `run_path`, whose identity before the read was
    `identity`). Returns the cache path, or None when it was not written."""
    table = loaded.table
    if os.stat(run_path).st_size != identity["size"]:
        return None   # the run file grew while it was read (a live run): nothing to pin
    ids = list(map(str, table.ids))
    if any("\0" in s for s in ids):
        return None
    arrays: dict[str, np.ndarray] = {}
    for name in _ARRAYS:
        a = getattr(table, name)
        if a is not None:
            arrays[name] = np.ascontiguousarray(a)
    if ids:
        arrays["ids_utf8"] = np.frombuffer("\0".join(ids).encode("utf-8"), dtype=np.uint8)
    layout: dict[str, list] = {}
    offset = 0
    for name, a in arrays.items():
        layout[name] = [a.dtype.newbyteorder("<").str, int(a.size), offset, int(a.nbytes)]
        offset = _aligned(offset + a.nbytes)
    meta = {
        "format": FORMAT, "source": identity, "arrays": layout,
        "table": {"n": len(table), "adapters": table.adapters, "timing": table.timing,
                  "origin_s": table.origin_s, "duration_s": table.duration_s,
                  "errors": [[i, e] for i, e in enumerate(table.errors) if e is not None]},
        "loaded": {k: getattr(loaded, k) for k in _LOADED_META},
    }
    try:
        head = json.dumps(meta).encode("utf-8")
    except (TypeError, ValueError):
        return None   # something in the header that JSON cannot hold: no cache
    start = _aligned(len(MAGIC) + 8 + len(head))   # offsets count from here
    path = cache_path(run_path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head)
            for name, a in arrays.items():
                f.seek(start + layout[name][2])
                f.write(memoryview(a.astype(a.dtype.newbyteorder("<"), copy=False)).cast("B"))
            f.truncate(start + offset)
        os.replace(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        return None
    return path


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN
