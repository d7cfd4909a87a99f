"""Keeping the triggerer's full garbage collections short: long-lived objects are frozen.

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
does the same in its DAG processor and local executor.

* The start-up heap is frozen once per process, when the first status watch starts, i.e. in
  the triggerer once Airflow and the triggerer are loaded (:func:`freeze_startup_heap`).
* The triggers' own state is long-lived too: each running trigger keeps ~12 tracked objects of
  Airflow and asyncio alive (its task, coroutines, async generator, context, logger) and ~10
  of this provider's (the read it waits for, the batch it last saw, its progress reporter).
  At 10,000 triggers that is ~260,000 objects, a 300-450 ms full collection measured, and no
  change of the provider can bring the Airflow and asyncio part under the 50 ms goal. So
  :func:`trigger_started` freezes again whenever the running triggers have grown by a
  tenth (from :data:`FREEZE_MIN_TRIGGERS` on), and :func:`statuses_settled` again at each
  page a status watch asks for in the minute after, when its previous page gave batches their
  first status from the watch and their readers have taken it (what a trigger keeps from its
  first status on: ~17 tracked objects, the batch, its counts, its logger, its next read).
  Frozen once per sweep instead, a sweep of 10 pages left up to 10,000 triggers' worth
  unfrozen at 10 Connections x 1,000 (~136,000 objects, full collections of 50-70 ms
  measured) until it ended. What the triggers keep is frozen a second after it exists, and
  full collections walk only what is young.
* What that can leak is bounded: a reference cycle among frozen objects is never collected
  (an ended trigger's objects are freed by reference counting: 6 cyclic objects were left by
  1,000 triggers cancelled, measured). :func:`trigger_ended` counts the triggers that ended
  since the last freeze; once they are a quarter of those frozen, the heap is unfrozen,
  collected once (one full collection, the stall the freeze otherwise saves every few
  seconds) and frozen again.

``[qwenbatch] trigger_freeze_startup_heap = False`` turns all of it off.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

# Below this many running triggers a full collection of their state is a few ms: not frozen.
FREEZE_MIN_TRIGGERS = 500
# Freeze again when the running triggers have grown by this share since the last freeze (a
# freeze is O(1): often is cheap; rarely leaves more unfrozen state for a full collection).
FREEZE_GROWTH = 0.1
# Unfreeze, collect once and refreeze when this share of the triggers frozen has ended.
ENDED_SHARE = 0.25
# After a freeze of starting triggers, each page of statuses taken within this many seconds
# freezes again: each status watch (one per Connection) gives its triggers their first status in turn.
SETTLE_WINDOW = 60.0

_frozen = False
_running = 0
_running_at_freeze = 0
_ended_since_freeze = 0
# When the triggers' state was last frozen, and whether it must be frozen once more when they
# settled: what a trigger keeps from its first status on (the batch, its progress reporter, its
# logger) is created a sweep after it started, i.e. after the freeze its start caused.
_frozen_at = 0.0
_settle_pending = False
_settled_at = 0.0  # when statuses_settled last froze


def freeze_startup_heap() -> bool:
    """Freeze the objects alive now, once per process (see the module docs); whether it froze now."""
    global _frozen
    if _frozen or not _enabled():
        return False
    _frozen = True
    before = gc.get_count()
    gc.freeze()
    # Not gc.get_freeze_count(): it walks the whole permanent generation (~50 ms at 10,000 triggers).
    log.debug("Froze the start-up heap (counts before %s)", before)
    return True


def trigger_started() -> bool:
    """Count a running trigger; freeze when they have grown by a tenth (see the module docs); whether it froze.

    Called as each trigger takes its status watch.
    """
    global _running, _running_at_freeze, _frozen_at, _settle_pending
    _running += 1
    if _running < FREEZE_MIN_TRIGGERS or _running < _running_at_freeze * (1 + FREEZE_GROWTH):
        return False
    if not _enabled():
        return False
    # No collection first: even a young one took up to 50-65 ms of CPU here at 10,000 triggers,
    # and the young cyclic garbage it would spare is little (and bounded, see trigger_ended).
    gc.freeze()
    _running_at_freeze = _running
    _frozen_at, _settle_pending = time.monotonic(), True
    log.debug("Froze the state of %d running triggers", _running)
    return True


def statuses_settled(first_listed_at: float) -> bool:
    """Freeze once more when first statuses given after a freeze of starting triggers have been taken (within :data:`SETTLE_WINDOW`); whether it froze.

    Called by a status watch before it asks for its next page, about a second after the last
    one: the readers that page answered have run on and created what they keep. Only first
    statuses count: in the steady state nothing new is kept, and a freeze would only keep the
    young cyclic garbage of the second before from being collected.

    :param first_listed_at: when the watch last gave a batch new to it to its readers
        (``time.monotonic()``; 0: never).
    """
    global _settle_pending, _settled_at
    # Nothing new since the last freeze (of starting triggers, or of settled ones): none now.
    if not _settle_pending or first_listed_at <= max(_frozen_at, _settled_at):
        return False
    if time.monotonic() - _frozen_at > SETTLE_WINDOW:
        _settle_pending = False
        return False
    gc.freeze()
    _settled_at = time.monotonic()
    log.debug("Froze the settled state of %d running triggers", _running)
    return True


def trigger_ended() -> bool:
    """Count an ended trigger; collect what the frozen ones left once a quarter of them ended; whether it did.

    Called as each trigger gives its status watch back.
    """
    global _running, _running_at_freeze, _ended_since_freeze
    _running = max(0, _running - 1)
    if _running_at_freeze == 0:
        return False
    _ended_since_freeze += 1
    if _ended_since_freeze < _running_at_freeze * ENDED_SHARE:
        return False
    gc.unfreeze()
    freed = gc.collect()
    gc.freeze()
    log.debug(
        "%d of %d frozen triggers ended: collected %d objects, %d running triggers frozen again",
        _ended_since_freeze,
        _running_at_freeze,
        freed,
        _running,
    )
    _ended_since_freeze = 0
    _running_at_freeze = _running
    return True


def _enabled() -> bool:
    from airflow_provider_qwenbatch.compat import conf

    return conf.getboolean("qwenbatch", "trigger_freeze_startup_heap", fallback=True)
