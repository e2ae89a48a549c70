"""vLLM's FCFS waiting queue, indexed by adapter so the `max_loras` skip costs nothing.

vLLM scans `self.waiting` from the head; a request whose adapter would exceed `max_loras` is
popped, remembered and pushed back to the head in order after the scan (schedule(),
`skip_request` + `prepend_requests`). The net effect is that the queue keeps its order and the
scan admits, in FCFS order, only requests of the base model or of adapters already in the
step's set (once the set is full). Keeping one FIFO per adapter, ordered by a global position
key, gives the same admissions without touching the skipped requests.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Collection, Iterator


class WaitingQueue:
    def __init__(self) -> None:
        self.queues: dict[int, deque] = {}  # adapter (-1 = base) -> requests in order
        self.n = 0
        self._head = 0   # position key for the next request put at the head
        self._tail = 0   # position key for the next request put at the tail

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __iter__(self) -> Iterator:
        """All waiting requests, in queue order."""
        items = [r for q in self.queues.values() for r in q]
        items.sort(key=lambda r: r.wkey)
        return iter(items)

    def append(self, req) -> None:
        req.wkey = self._tail
        self._tail += 1
        q = self.queues.get(req.adapter)
        if q is None:
            q = self.queues[req.adapter] = deque()
        q.append(req)
        self.n += 1

    def appendleft(self, req) -> None:
        self._head -= 1
        req.wkey = self._head
        q = self.queues.get(req.adapter)
        if q is None:
            q = self.queues[req.adapter] = deque()
        q.appendleft(req)
        self.n += 1

    def head(self, allowed: Collection[int] | None) -> Any:
        """The first request in queue order whose adapter is base or in `allowed`
        (None: any adapter)."""
        best: Any = None
        queues = self.queues
        if allowed is None:
            for q in queues.values():
                r = q[0]
                if best is None or r.wkey < best.wkey:
                    best = r
            return best
        if len(queues) <= len(allowed):
            # usually few adapters wait: walk their queues rather than every allowed adapter
            for a, q in queues.items():
                if a == -1 or a in allowed:
                    r = q[0]
                    if best is None or r.wkey < best.wkey:
                        best = r
            return best
        base = queues.get(-1)
        if base:
            best = base[0]
        for aq in map(queues.get, allowed):  # (map: the lookups run in C)
            if aq:
                r = aq[0]
                if best is None or r.wkey < best.wkey:
                    best = r
        return best

    def pop(self, req) -> None:
        """Remove `req`, which is the head of its adapter's queue."""
        q = self.queues[req.adapter]
        q.popleft()
        if not q:
            del self.queues[req.adapter]
        self.n -= 1

    def remove(self, req) -> bool:
        q = self.queues.get(req.adapter)
        if not q or req not in q:
            return False
        q.remove(req)
        if not q:
            del self.queues[req.adapter]
        self.n -= 1
        return True
