"""A binary column cache beside a large run file, so a second report of it skips the JSON.

Parsing a run file is bounded by its JSON: ~6-9 us per record line with orjson, plus the
base64 of the chunk arrays, plus the first touch of the memory the parse fills. For 10^6
records of 100 chunks that is ~25-30 s, every time. The first read of a large run file
(>= `MIN_BYTES`) therefore leaves the finished `RequestTable` beside it, in
`.<name>.cols` (hidden, so `runs/*` globs do not pick it up): one JSON header, then every
column as raw little-endian bytes at 64-byte-aligned offsets. Later reads map that file
read-only and build the table from views of it: no parse and no copy (the arrays are the page
cache's pages; nothing writes into a table, and a write would raise).

The cache is used only while it matches its run file and the code that built it: the run
file's size, modification time and a hash of its first and last 64 KiB, and a hash of the
table-building modules' source, are in its header (a run still being written grows, so its
cache goes stale and is rebuilt). A cache that is missing, stale, cut short, of another format
or whose header does not describe a consistent table is ignored: the run file is read as if
there were none. The column bytes carry no checksum (a flipped bit on disk would go unseen,
as it would in the run file). Writing is best effort: a read-only folder, a disk with less
than twice the cache's size free, or an interrupt leaves no cache and no temporary file, and
never fails a report. Request ids holding a NUL character are never cached. The run file
itself is never touched.
"""
from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
import struct
import sys
from typing import Any, Callable

import numpy as np

from twinbench.reports.load import LoadedRun
from twinbench.reports.table import RequestTable

FORMAT = "twinbench-cols/1"
MAGIC = b"TWINBENCH-COLS/1"
MIN_BYTES = 32 << 20   # smaller run files parse in well under a second: no cache
_ALIGN = 64
UNKNOWN_CODE = "unknown"
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
    """What must not change for the cache to stay valid: the run file (size, modification
    time, a hash of its first and last 64 KiB) and the code that turned it into a table."""
    st = os.stat(run_path)
    h = hashlib.sha256()
    with open(run_path, "rb") as f:
        h.update(f.read(_PROBE))
        if st.st_size > _PROBE:
            f.seek(max(_PROBE, st.st_size - _PROBE))
            h.update(f.read(_PROBE))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "probe_sha256": h.hexdigest(),
            "code": _code_hash()}


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    """A fix in how a run file becomes a table must not be hidden by an older cache: the
    cache is tied to the source of the modules that build the table."""
    from twinbench.reports import fastread, records, table

    h = hashlib.sha256()
    for module in (fastread, records, table, sys.modules[__name__]):
        try:
            with open(module.__file__, "rb") as f:
                h.update(f.read())
        except (OSError, TypeError):
            return UNKNOWN_CODE   # no source to compare against: read_through never caches
    return h.hexdigest()


def read_through(run_path: str, parse: Callable[[str], LoadedRun]) -> LoadedRun:
    """The run from its cache when valid; else `parse(run_path)`, leaving a cache of it when
    the run file is large enough to be worth one."""
    if os.path.getsize(run_path) < MIN_BYTES or _code_hash() == UNKNOWN_CODE:
        return parse(run_path)
    cached = load_cached(run_path)
    if cached is not None:
        return cached
    try:
        identity = source_identity(run_path)
    except OSError:
        return parse(run_path)   # the parse says what is wrong with the file
    loaded = parse(run_path)
    save_cache(run_path, loaded, identity)
    return loaded


def load_cached(run_path: str) -> LoadedRun | None:
    """The cached table of `run_path`, or None when there is no valid cache (missing, stale,
    of other code, cut short or not what this module writes)."""
    try:
        f = open(cache_path(run_path), "rb")
    except OSError:
        return None
    with f:
        try:
            return _read_cache(f, run_path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError,
                OverflowError, MemoryError, struct.error):
            return None


def _read_cache(f, run_path: str) -> LoadedRun | None:
    size = os.fstat(f.fileno()).st_size
    head = f.read(len(MAGIC) + 8)
    if len(head) < len(MAGIC) + 8 or not head.startswith(MAGIC):
        return None
    (hlen,) = struct.unpack("<Q", head[len(MAGIC):])
    if hlen > size - len(head):
        return None
    meta = json.loads(f.read(hlen))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT \
            or meta.get("source") != source_identity(run_path):
        return None
    t = meta["table"]
    n = int(t["n"])
    start = _aligned(len(MAGIC) + 8 + hlen)
    layout = meta["arrays"]
    for name, (dtype, count, off, nbytes) in layout.items():
        if (name not in _ARRAYS and name != "ids_utf8") or count * np.dtype(dtype).itemsize \
                != nbytes or off < 0 or start + off + nbytes > size:
            return None   # not what save_cache writes, or cut short
    buf = _map(f.fileno(), size)
    cols: dict[str, Any] = {name: None for name in _ARRAYS}
    for name, (dtype, count, off, _nbytes) in layout.items():
        cols[name] = np.frombuffer(buf, dtype=np.dtype(dtype), count=count, offset=start + off)
    ids_utf8 = cols.pop("ids_utf8", None)
    if not _consistent(cols, n):
        return None
    ids = np.empty(n, dtype=object)
    if n:
        ids[:] = bytes(ids_utf8).decode("utf-8").split("\0")
    errors: list[str | None] = [None] * int(t["errors_len"])
    for i, text in t["errors"]:
        errors[i] = text
    table = RequestTable(ids=ids, adapters=list(t["adapters"]), timing=t["timing"],
                         origin_s=t["origin_s"], duration_s=t["duration_s"], errors=errors,
                         **cols)
    return LoadedRun(table=table, path=run_path, **meta["loaded"])


def _consistent(cols: dict[str, Any], n: int) -> bool:
    """The shapes a RequestTable of `n` rows has (a cheap guard against a damaged header; the
    column bytes themselves carry no checksum)."""
    per_row = [a for name, a in cols.items()
               if name not in ("chunk_start", "chunk_t", "chunk_n", "gap_s")]
    if any(a is None or len(a) != n for a in per_row):
        return False
    start, chunk_t, chunk_n = cols["chunk_start"], cols["chunk_t"], cols["chunk_n"]
    if start is None or chunk_t is None or len(start) != n + 1 or start[0] != 0 \
            or start[-1] != len(chunk_t):
        return False
    return chunk_n is None or len(chunk_n) == len(chunk_t)


def _map(fd: int, size: int) -> mmap.mmap:
    """A read-only mapping of the whole file: the arrays are views of the page cache (no
    copy; writing into one raises). On Linux its pages are mapped by the one call
    (MAP_POPULATE): page by page costs far more on a VM."""
    if hasattr(mmap, "MAP_SHARED"):
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
    return mmap.mmap(fd, size, access=mmap.ACCESS_READ)   # Windows


def save_cache(run_path: str, loaded: LoadedRun, identity: dict) -> str | None:
    """Write the cache of `loaded` (read from `run_path`, whose identity before the read was
    `identity`). Returns the cache path, or None when it was not written: best effort, never
    an error, and no temporary file left behind (also when interrupted)."""
    try:
        if os.stat(run_path).st_size != identity["size"]:
            return None   # the run file grew while it was read (a live run): nothing to pin
        columns = _columns(loaded, identity)
    except (OSError, ValueError, TypeError):
        return None   # gone, or something JSON cannot hold: no cache
    if columns is None:
        return None
    arrays, layout, head, data_bytes = columns
    start = _aligned(len(MAGIC) + 8 + len(head))   # offsets count from here
    end = start + data_bytes
    path = cache_path(run_path)
    if not _room_for(os.path.dirname(path), end):
        return None
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head)
            for name, a in arrays.items():
                f.seek(start + layout[name][2])
                f.write(memoryview(a).cast("B"))
            f.truncate(end)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, Exception):
            return None
        raise   # Ctrl-C: the cache is dropped, the interrupt goes on
    return path


def _columns(loaded: LoadedRun, identity: dict
             ) -> tuple[dict[str, np.ndarray], dict[str, list], bytes, int] | None:
    """The arrays to write (little-endian, contiguous), their layout, the encoded JSON header
    and the data's size; None when the run cannot be cached. Raises (no cache) if the header
    holds what JSON cannot."""
    table = loaded.table
    ids = list(map(str, table.ids))
    if any("\0" in s for s in ids):
        return None   # ids are stored NUL-separated: such a run is parsed every time
    arrays: dict[str, np.ndarray] = {}
    for name in _ARRAYS:
        a = getattr(table, name)
        if a is not None:
            a = np.ascontiguousarray(a)
            arrays[name] = a.astype(a.dtype.newbyteorder("<"), copy=False)
    if ids:
        arrays["ids_utf8"] = np.frombuffer("\0".join(ids).encode("utf-8"), dtype=np.uint8)
    layout: dict[str, list] = {}
    offset = 0
    for name, a in arrays.items():
        layout[name] = [a.dtype.str, int(a.size), offset, int(a.nbytes)]
        offset = _aligned(offset + a.nbytes)
    meta = {
        "format": FORMAT, "source": identity, "arrays": layout,
        "table": {"n": len(table), "adapters": table.adapters, "timing": table.timing,
                  "origin_s": table.origin_s, "duration_s": table.duration_s,
                  "errors_len": len(table.errors),
                  "errors": [[i, e] for i, e in enumerate(table.errors) if e is not None]},
        "loaded": {k: getattr(loaded, k) for k in _LOADED_META},
    }
    return arrays, layout, json.dumps(meta).encode("utf-8"), offset


def _room_for(folder: str, nbytes: int) -> bool:
    """Leave the cache out when it would take more than half the free space: a run still
    being written beside it must not lose its disk to a cache."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return True
    return st.f_bavail * st.f_frsize >= 2 * nbytes


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN
