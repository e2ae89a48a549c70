"""`TwinBackend`: the DESIGN §2 backend protocol on top of the twin (simulated time).

The simulation runs in a worker thread so that the event loop keeps handling Ctrl-C: the
progress callback checks `sink.stop` and stops the simulation, and `replay_to_file` records the
run as interrupted with every unreported request filled in.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any

from twinbench.backends.base import ReplayOptions, RunInfo
from twinbench.traces.core import Trace
from twinbench.twin.config import ServerConfig
from twinbench.twin.profile import Profile


class _Stopped(Exception):
    pass


class TwinBackend:
    name = "twin"
    realtime = False

    def __init__(self, profile: Profile | str, config: ServerConfig | None = None, *,
                 mode: str = "coalesced", replicas: int = 1, router: str = "round-robin"):
        self.profile = Profile.load(profile)
        self.config = config or ServerConfig()
        self.mode = mode
        self.replicas = replicas
        self.router = router

    def describe(self) -> dict[str, Any]:
        d = {"name": self.name, "kind": "twin", "profile": self.profile.name,
             "profile_source": self.profile.source, "server_config": self.config.to_dict(),
             "mode": self.mode}
        if self.replicas > 1:
            d.update(replicas=self.replicas, router=self.router)
        return d

    async def replay(self, trace: Trace, options: ReplayOptions, sink) -> RunInfo:
        return await asyncio.to_thread(self.replay_sync, trace, options, sink)

    def replay_sync(self, trace: Trace, options: ReplayOptions, sink) -> RunInfo:
        from twinbench.twin.cluster import simulate_cluster
        from twinbench.twin.simulation import simulate

        horizon = None
        if len(trace):
            last = float(trace.arrival_s.max())
            if options.duration_s is not None:
                last = min(last, options.duration_s)
            horizon = last + options.drain_limit_s
        bar = None
        if not options.quiet and sys.stderr.isatty() and len(trace):
            from tqdm import tqdm
            bar = tqdm(total=round(float(trace.arrival_s.max()), 1), unit="sim s",
                       desc="twin", file=sys.stderr, dynamic_ncols=True)
        stop = getattr(sink, "stop", None)

        def progress(sim_s: float) -> None:
            if stop is not None and stop.is_set():
                raise _Stopped()
            if bar is not None:
                bar.n = round(min(sim_s, bar.total), 1)
                bar.refresh()

        kwargs = dict(mode=self.mode, token_timestamps=options.token_timestamps,
                      horizon_s=horizon, warmup_requests=options.warmup_requests,
                      emit=sink.emit, dispatch_until_s=options.duration_s, progress=progress)
        try:
            if self.replicas > 1:
                result = simulate_cluster(trace, [self.config] * self.replicas, self.profile,
                                          router=self.router, **kwargs)
            else:
                result = simulate(trace, self.config, self.profile, **kwargs)
        except _Stopped:
            return RunInfo(backend="twin", profile=self.profile.summary(),
                           server_config=self.config.to_dict(), extra={"stopped": True})
        finally:
            if bar is not None:
                bar.close()
        info = result.info
        if result.sketches:
            info.extra["sketches"] = {k: {f: sk.to_json() for f, sk in fams.items()}
                                      for k, fams in result.sketches.items()}
        return info
