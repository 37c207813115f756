"""Histogram buckets as plain numbers."""

from cairn.buckets import Buckets


def test_observations_land_in_the_first_bucket_that_holds_them_and_add_up() -> None:
    b = Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 7.0):
        b.observe(v)
    assert b.counts == [2, 1, 1]
    assert b.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert b.total == 7.65
