"""Time spent in chosen functions, added up per label (calls from every thread count)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager


@contextmanager
def timed_calls(targets: Iterable[tuple[object, str, str]],
                spent: MutableMapping[str, float]) -> Iterator[None]:
    """While the block runs, each ``(owner, attribute, label)`` function adds its time to
    ``spent[label]``; the originals are put back afterwards."""
    originals = {}

    def wrap(owner, name: str, label: str) -> None:
        original = getattr(owner, name)
        # A static method stays one (set on the class, a plain function would be bound).
        raw = vars(owner).get(name) if isinstance(owner, type) else None
        originals[(owner, name)] = raw if isinstance(raw, staticmethod) else original

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - started

        setattr(owner, name, staticmethod(timed) if isinstance(raw, staticmethod) else timed)

    for owner, name, label in targets:
        wrap(owner, name, label)
    try:
        yield
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)
