"""Fair queues: which work runs first when uploads compete for the workers (pure policy).

One FIFO queue made a 1-page upload wait behind every chunk of a 300-page document. Each task
now carries a priority, and the broker hands a free worker the most urgent task queued
(workers.celery_app wires it on Redis: 0 is served first, 9 last). The policy is "least
attained service": a chunk is as urgent as the document it belongs to is young, measured in
the pages of that document ahead of it. A small document's every chunk, and the first chunk of
any document, outrank the long tail of a large one; the large one still advances whenever
nothing smaller waits, and chunks of one priority keep their order.

A render (opening and rasterising a document, at most KB_RENDER_BUDGET_S a task: the rest of a
long one goes on in a new render task, at the same priority) outranks everything, since nothing
of a new upload can be encoded before it; a reindex is background work, below every upload.
"""

from __future__ import annotations

HIGHEST = 0  # served first
LOWEST = 9  # served last
# The priorities Redis keeps a list for (kombu's default steps, named here so the wiring and the
# policy agree); a priority between two steps falls to the lower step (is served earlier).
STEPS = (0, 3, 6, 9)

RENDER = HIGHEST
REINDEX = LOWEST
MAINTENANCE = HIGHEST  # sweeps and failing a timed-out row: short, and they unstick others

# (pages of the document ahead of a chunk, the priority from there on), in increasing order.
# A chunk of a 1-page or 16-page document is never below 0; pages 17-64 of any document are 3,
# pages 65-256 are 6, the rest 9, where they share the lowest step with reindexing.
_BY_PAGES_AHEAD = ((0, 0), (16, 3), (64, 6), (256, LOWEST))


def encode_priority(first_page: int) -> int:
    """The priority of the encode task of a chunk that starts at page ``first_page`` (1-based)."""
    ahead = max(first_page - 1, 0)
    priority = HIGHEST
    for threshold, value in _BY_PAGES_AHEAD:
        if ahead >= threshold:
            priority = value
    return priority
