"""Measuring event-loop lag, and naming what ran during the worst stall.

:class:`LagProbe` is a coroutine sleeping 10 ms again and again; its lag is how late it wakes.
:class:`StallRecorder` records, while it is installed, every garbage collection
(``gc.callbacks``: generation and duration) and every event-loop callback that ran longer than
a threshold (the ``asyncio.Handle._run`` of the loop, timed: which task, and where it
suspended next), and every loop pass (``_run_once``) over 20 ms with the callbacks it ran, so the cause of a stall is what overlapped it. Both cost microseconds per
event, not a debug-mode loop.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks._report import percentile


@dataclass
class Lags:
    """Wake-up lags of the probe: ``(when it slept, lag)`` pairs, perf_counter seconds."""

    samples: list[tuple[float, float]] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[tuple[float, float]]:
        """The samples whose sleep began in ``[start, end)``."""
        return [s for s in self.samples if start <= s[0] < end]


class LagProbe:
    """Sleeps 10 ms in a loop and records how late each wake-up is."""

    def __init__(self) -> None:
        self.lags = Lags()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.lags.samples.append((t, max(0.0, time.perf_counter() - t - 0.01)))

    def start(self) -> None:
        """Start probing in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop probing."""
        self._stop.set()
        if self._task is not None:
            await self._task


def _describe(handle: asyncio.Handle) -> str:
    callback: Any = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro: Any = owner.get_coro()
        where = ""
        # Follow the await chain to where the step suspended (or ended).
        inner = coro
        while inner is not None:
            frame = getattr(inner, "cr_frame", None) or getattr(inner, "ag_frame", None)
            if frame is not None:
                where = f" (suspended at {frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno})"
            inner = getattr(inner, "cr_await", None) or getattr(inner, "ag_await", None)
        return f"task {getattr(coro, '__qualname__', '?')}{where}"
    return getattr(callback, "__qualname__", repr(callback))[:80]


class StallRecorder:
    """Records garbage collections and slow loop callbacks while installed (a context manager).

    :param slow: callbacks running at least this long (seconds) are recorded.
    """

    def __init__(self, slow: float = 0.005) -> None:
        self.slow = slow
        # (start, duration, generation, CPU time of this thread): the CPU figure is what the
        # collection itself cost, the wall duration also counts the machine's other load.
        self.collections: list[tuple[float, float, int, float]] = []
        self.callbacks: list[tuple[float, float, str]] = []  # (start, duration, what)
        # Loop passes (one _run_once) that took >= 20 ms: (start, duration, what, callback time).
        self.passes: list[tuple[float, float, str, float]] = []
        self._gc_started = 0.0
        self._gc_cpu = 0.0
        self._original: Callable[[asyncio.Handle], None] | None = None
        self._original_pass: Callable[[Any], None] | None = None
        self._this_pass: list[tuple[float, asyncio.Handle]] = []

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_started, self._gc_cpu = now, time.thread_time()
        else:
            cpu = time.thread_time() - self._gc_cpu
            self.collections.append((self._gc_started, now - self._gc_started, int(info["generation"]), cpu))

    def __enter__(self) -> StallRecorder:
        gc.callbacks.append(self._on_gc)
        original = self._original = asyncio.Handle._run
        recorder = self

        def timed(handle: asyncio.Handle) -> None:
            t = time.perf_counter()
            original(handle)
            took = time.perf_counter() - t
            recorder._this_pass.append((took, handle))
            if took >= recorder.slow:
                recorder.callbacks.append((t, took, _describe(handle)))

        base = asyncio.base_events.BaseEventLoop
        original_pass = self._original_pass = base._run_once  # type: ignore[attr-defined]

        def timed_pass(loop: Any) -> None:
            recorder._this_pass = []
            t = time.perf_counter()
            original_pass(loop)
            took = time.perf_counter() - t
            if took >= 0.02:
                ran = recorder._this_pass
                top = sorted(ran, key=lambda r: -r[0])[:3]
                what = ", ".join(f"{_describe(h)} {d * 1000:.1f} ms" for d, h in top)
                busy = sum(d for d, _ in ran)
                recorder.passes.append(
                    (
                        t,
                        took,
                        f"one loop pass ran {len(ran)} callbacks for {busy * 1000:.0f} ms (longest: {what})",
                        busy,
                    )
                )
            recorder._this_pass = []

        asyncio.Handle._run = timed  # type: ignore[method-assign,assignment]
        setattr(base, "_run_once", timed_pass)  # noqa: B010 (private: not in the stubs)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)
        if self._original is not None:
            asyncio.Handle._run = self._original  # type: ignore[method-assign,assignment]
        if self._original_pass is not None:
            setattr(asyncio.base_events.BaseEventLoop, "_run_once", self._original_pass)  # noqa: B010

    def cause(self, start: float, end: float) -> str:
        """What ran in ``[start, end]``: the collections and the slowest callbacks overlapping it."""
        parts = []
        gcs = [c for c in self.collections if c[0] < end and c[0] + c[1] > start and c[1] >= 0.002]
        if gcs:
            worst = max(gcs, key=lambda c: c[1])
            parts.append(
                f"gc gen{worst[2]} collection {worst[1] * 1000:.0f} ms (CPU {worst[3] * 1000:.0f} ms)"
                + (f" (+{len(gcs) - 1} more)" if len(gcs) > 1 else "")
            )
        cbs = sorted((c for c in self.callbacks if c[0] < end and c[0] + c[1] > start), key=lambda c: -c[1])
        for c in cbs[:1]:
            parts.append(f"{c[2]} ran {c[1] * 1000:.0f} ms")
        passes = [p for p in self.passes if p[0] < end and p[0] + p[1] > start]
        busy = sum(p[3] for p in passes)
        if passes and not gcs and not cbs and busy >= 0.5 * (end - start - 0.01):
            parts.append(max(passes, key=lambda p: p[1])[2])
        # A pass includes its wait in select(): a late wake-up with nothing run is the OS's.
        return "; ".join(parts) or "nothing ran on the loop: the process was not on a CPU (machine load)"

    def gc_summary(self, start: float, end: float) -> str:
        """Full (gen2) collections in ``[start, end)``: how many, and the longest (wall, and CPU)."""
        full = [c for c in self.collections if start <= c[0] < end and c[2] == 2]
        if not full:
            return "0"
        worst = max(full, key=lambda c: c[1])
        return f"{len(full)} (max {worst[1] * 1000:.0f} ms, CPU {max(c[3] for c in full) * 1000:.0f} ms)"


def window_stats(lags: Lags, recorder: StallRecorder, start: float, end: float) -> dict[str, Any]:
    """p99 and max lag in a window, and what caused the worst stall."""
    samples = lags.between(start, end)
    values = [lag for _, lag in samples]
    worst = max(samples, key=lambda s: s[1], default=(start, 0.0))
    return {
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": worst[1] * 1000,
        # The probe slept at worst[0]; the stall is somewhere in the 10 ms + lag after it.
        "cause": recorder.cause(worst[0], worst[0] + 0.01 + worst[1]) if worst[1] > 0.02 else "",
        "full_gcs": recorder.gc_summary(start, end),
    }
