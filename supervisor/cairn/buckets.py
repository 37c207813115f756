"""A histogram as plain numbers: counted by the code that observes, exposed by the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Buckets:
    """Observations per upper bound (the last slot is +Inf), and their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count one value in the first bucket that holds it."""
        i = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[i] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus' form: (le, observations <= le), ending with +Inf."""
        out, running = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
