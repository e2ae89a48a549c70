"""The twin engine driven in real time for `twinbench serve`.

Simulated time follows the event loop's monotonic clock: `sim_ns = (wall - origin) * speed`.
A timer fires at the wall time of the engine's next event; the engine is advanced to "now"
there and on every arrival, and its token events are handed to the waiting HTTP handlers.

Epochs and the client's clock (`twin_arrival_s`, docs/twin-server.md): a request may state its
simulated arrival. The first such request that reaches an idle twin starts a new epoch: a
fresh engine whose clock is the client's (origin chosen so that this request arrives at its
stated time), running `slack_s` of wall time behind, so that later requests that reach the
server up to `slack_s` late still enter the simulation at their stated times. Their simulated
results are then exactly the in-process twin's for the same trace, config and profile. A
request that comes later than that is entered at the engine's current time, and its response
says by how much (`arrival_late_ns`).
"""
from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

NS = 1_000_000_000


class EventBox:
    """A request's events: the twin appends, the HTTP handler takes all that are there.

    One future per wait instead of asyncio.Queue's machinery per item: with one token per
    stream per engine step, the queue's put and get took 9 % and 6 % of the served twin's time
    (py-spy, 500 req/s)."""

    __slots__ = ("items", "_waiter")

    def __init__(self) -> None:
        self.items: list = []
        self._waiter: asyncio.Future | None = None

    def put_nowait(self, event: Any) -> None:
        self.items.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list:
        """Every event not yet taken, in order (waits for at least one)."""
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self.items = self.items, []
        return items


@dataclass
class SimRequest:
    """One request inside the simulation, and the box of events its HTTP handler reads."""

    request_id: str
    model: str
    adapter: str | None
    prompt_tokens: int
    output_tokens: int
    arrival_ns: int
    arrival_late_ns: int = 0
    epoch: int = 0
    events: EventBox = field(default_factory=EventBox)
    first_token_ns: int | None = None
    finish_ns: int | None = None
    generated: int = 0
    token_times_ns: list[int] = field(default_factory=list)
    token_counts: list[int] = field(default_factory=list)

    def twin_summary(self) -> dict[str, Any]:
        """The request's simulated times (ns on its epoch's clock) for response bodies."""
        d = {"arrival_ns": self.arrival_ns, "first_token_ns": self.first_token_ns,
             "finish_ns": self.finish_ns, "output_tokens": self.generated,
             "epoch": self.epoch}
        if self.arrival_late_ns:
            d["arrival_late_ns"] = self.arrival_late_ns
        return d


@dataclass(frozen=True)
class RequestRefused:
    """Put in a request's event box instead of a token event when the engine refuses it (or the
    server shuts down)."""

    message: str
    status: int = 400


@dataclass
class Epoch:
    engine: Any
    index: int
    origin_wall: float      # loop time at simulated 0
    hold_ns: int            # the engine runs this far behind the wall-clock mapping
    client_clock: bool      # started by a request carrying twin_arrival_s


class RealtimeTwin:
    """Owns the engine (one per epoch) and feeds its events to the requests' event boxes."""

    def __init__(self, make_engine: Callable[[], Any], speed: float = 1.0,
                 slack_s: float = 0.25, loop: asyncio.AbstractEventLoop | None = None):
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.make_engine = make_engine
        self.speed = speed
        self.slack_s = slack_s
        self.loop = loop or asyncio.get_event_loop()
        self.active: dict[str, SimRequest] = {}
        self._ids = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self.epoch = Epoch(self._fresh_engine(), 0, self.loop.time(), 0, False)
        self.advanced_to = -1  # the engine has run every step starting at or before this
        self.preemptions_before = 0  # of earlier epochs' engines
        self.finished_total = 0
        self.on_finish: Callable[[SimRequest], None] | None = None

    # ---- clock ---------------------------------------------------------------------------
    def sim_now_ns(self, wall: float | None = None) -> int:
        wall = self.loop.time() if wall is None else wall
        return int((wall - self.epoch.origin_wall) * self.speed * NS)

    def _target_ns(self, wall: float | None = None) -> int:
        return self.sim_now_ns(wall) - self.epoch.hold_ns

    def _wall_of(self, sim_ns: int) -> float:
        return self.epoch.origin_wall + (sim_ns + self.epoch.hold_ns) / (self.speed * NS)

    @property
    def engine(self) -> Any:
        return self.epoch.engine

    # ---- requests ------------------------------------------------------------------------
    def submit(self, model: str, adapter: str | None, rank: int | None, prompt_tokens: int,
               output_tokens: int, arrival_s: float | None = None,
               prefix: str = "cmpl") -> SimRequest:
        wall = self.loop.time()
        input_ns = self._input_ns()
        if arrival_s is not None:
            arrival_ns = round(arrival_s * NS)
            if not self.active and (not self.epoch.client_clock
                                    or arrival_ns + input_ns <= self.advanced_to):
                self._new_epoch(wall, arrival_ns)
        self.catch_up(wall)
        late = 0
        if arrival_s is None:  # now; it joins the engine at its next step, as in vLLM
            arrival_ns = self.sim_now_ns(wall)
        elif arrival_ns + input_ns <= self.advanced_to:
            # the engine already ran the step that would have seen it: enter it for the next
            on_time = self.advanced_to + 1 - input_ns
            late, arrival_ns = on_time - arrival_ns, on_time
        rid = f"{prefix}-twin-{next(self._ids):08d}"
        req = SimRequest(rid, model, adapter, prompt_tokens, output_tokens, arrival_ns,
                         late, self.epoch.index)
        self.active[rid] = req
        self.engine.submit(rid, arrival_ns, prompt_tokens, output_tokens, adapter, rank=rank)
        self._reschedule()
        return req

    def _input_ns(self) -> int:
        """The profile's front-end delay before a request reaches the scheduler."""
        return int(getattr(getattr(self.engine, "model", None), "input_ns", 0) or 0)

    def _engine_finished(self, ereq: Any, error: str | None = None,
                         status: str | None = None) -> None:
        """Engine callback: a request it refused (error) never gets a token event."""
        if error is None:
            return
        req = self.active.pop(ereq.rid, None)
        if req is not None:
            req.events.put_nowait(RequestRefused(error))

    def abort(self, req: SimRequest) -> None:
        """The client went away: drop the request from the simulation (vLLM aborts too)."""
        if self.active.pop(req.request_id, None) is not None and req.epoch == self.epoch.index:
            self.engine.abort(req.request_id)
            self._reschedule()

    def _fresh_engine(self) -> Any:
        engine = self.make_engine()
        engine.on_finish = self._engine_finished
        return engine

    def _new_epoch(self, wall: float, arrival_ns: int) -> None:
        self.preemptions_before += self.preemptions_of_epoch()
        hold = int(self.slack_s * self.speed * NS)
        origin = wall - arrival_ns / (self.speed * NS)
        self.epoch = Epoch(self._fresh_engine(), self.epoch.index + 1, origin, hold, True)
        self.advanced_to = -1

    def preemptions_of_epoch(self) -> int:
        return int(getattr(self.engine, "stats", {}).get("preemptions", 0))

    # ---- time passing --------------------------------------------------------------------
    def catch_up(self, wall: float | None = None, due_ns: int = -1) -> None:
        """Advance the engine to the present (at least to `due_ns`, the event a timer was set
        for, which float rounding of the wall clock could miss) and deliver its events."""
        target = max(self._target_ns(wall), due_ns)
        if target <= self.advanced_to:
            return
        self.advanced_to = target
        for ev in self.engine.advance(target):
            req = self.active.get(ev.request_id)
            if req is None:
                continue
            n = int(ev.tokens)
            req.generated += n
            req.token_times_ns.append(int(ev.time_ns))
            req.token_counts.append(n)
            if req.first_token_ns is None:
                req.first_token_ns = int(ev.time_ns)
            if ev.finished:
                req.finish_ns = int(ev.time_ns)
                del self.active[ev.request_id]
                self.finished_total += 1
                if self.on_finish is not None:
                    self.on_finish(req)
            req.events.put_nowait(ev)

    def sync(self) -> None:
        """Bring the engine to the present (e.g. before reading its state for /metrics)."""
        self.catch_up()
        self._reschedule()

    def _tick(self, due_ns: int) -> None:
        self._timer = None
        self.catch_up(due_ns=due_ns)
        self._reschedule()

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        nxt = self.engine.next_event_ns()
        if nxt is not None:
            self._timer = self.loop.call_at(self._wall_of(int(nxt)), self._tick, int(nxt))

    def close(self, message: str = "the server is shutting down") -> None:
        """Stop the clock and end every request still in the twin (their handlers answer
        with `message`), so that a shutdown never waits for long generations."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for req in self.active.values():
            req.events.put_nowait(RequestRefused(message, 503))
        self.active.clear()
