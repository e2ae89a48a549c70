"""The live progress bar of a wall-clock run: sent / finished / failed / dispatch lag.

On stderr, off with --quiet and when stderr is not a terminal (tqdm's `disable=None`).
"""
from __future__ import annotations

import asyncio
import sys
from typing import Callable

import numpy as np
from tqdm import tqdm


class Progress:
    def __init__(self, total: int, quiet: bool, interval_s: float = 0.5):
        self.bar = tqdm(total=total, unit="req", file=sys.stderr, disable=True if quiet else None,
                        dynamic_ncols=True, desc="replay")
        self.failed = 0
        self.interval_s = interval_s

    def finished(self, ok: bool) -> None:
        self.failed += not ok
        self.bar.update(1)

    async def tick(self, sent: Callable[[], int], lags: list[float]) -> None:
        """Refresh the postfix until cancelled; lag is the p99 of sends since the last tick."""
        if self.bar.disable:
            return
        seen = 0
        while True:
            await asyncio.sleep(self.interval_s)
            recent = lags[seen:]
            seen = len(lags)
            lag = f"{1e3 * float(np.percentile(recent, 99)):.1f}ms" if recent else "-"
            self.bar.set_postfix_str(f"sent={sent()} failed={self.failed} lag_p99={lag}",
                                     refresh=True)

    def close(self) -> None:
        self.bar.close()
