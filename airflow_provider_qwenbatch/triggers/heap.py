"""Keeping the triggerer's full garbage collections short: the start-up heap is frozen once.

A triggerer process holds Airflow, its providers, pydantic schemas and the task SDK: ~240,000
objects the cyclic garbage collector tracks, none of which ever becomes garbage. CPython's
full (generation 2) collection walks all of them, on the event loop thread: measured ~130 ms
on a 2-core machine, i.e. one stall of every trigger of the triggerer (kill-path cancels and
the heartbeat included) each time. A full collection runs when the objects promoted since the
last one exceed a quarter of the old generation, which a restart with 1,000 deferred tasks
does within its first second (see BENCHMARKS.md, "Triggerer scale").

``gc.freeze()`` moves every object alive at that moment to the permanent generation, which
collections no longer walk; objects created later are collected as before, and frozen objects
are still freed by reference counting (only a reference cycle among them would stay). Airflow
does the same in its DAG processor and local executor. The provider freezes once per process,
when the first status watch starts, i.e. in the triggerer once Airflow and the triggerer are
loaded; ``[qwenbatch] trigger_freeze_startup_heap = False`` turns it off.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

_frozen = False


def freeze_startup_heap() -> bool:
    """Freeze the objects alive now, once per process (see the module docs); whether it froze now."""
    global _frozen
    if _frozen or not _enabled():
        return False
    _frozen = True
    before = gc.get_count()
    gc.freeze()
    log.debug("Froze the start-up heap (%d objects; counts before %s)", gc.get_freeze_count(), before)
    return True


def _enabled() -> bool:
    from airflow_provider_qwenbatch.compat import conf

    return conf.getboolean("qwenbatch", "trigger_freeze_startup_heap", fallback=True)
