"""The front's token buckets: burst a sixth of the minute's allowance, then the rate."""

from __future__ import annotations

from workers.serve.ratelimit import RateLimiter, burst_for


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_burst_is_a_sixth_of_the_rate_rounded_up_at_least_one():
    assert burst_for(600) == 100
    assert burst_for(7) == 2
    assert burst_for(1) == 1


def test_a_token_gets_its_burst_then_waits_for_the_refill():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    key = ("sha", "acme/chat")
    assert [limiter.take(key, 60) for _ in range(10)] == [0.0] * 10
    wait = limiter.take(key, 60)
    assert wait == 1.0  # one a second at 60 a minute
    clock.now += 1.0
    assert limiter.take(key, 60) == 0.0
    assert limiter.take(key, 60) > 0


def test_buckets_are_per_token_and_deployment():
    limiter = RateLimiter(clock=Clock())
    assert limiter.take(("a", "d1"), 6) == 0.0
    assert limiter.take(("a", "d1"), 6) > 0
    assert limiter.take(("a", "d2"), 6) == 0.0
    assert limiter.take(("b", "d1"), 6) == 0.0


def test_a_changed_rate_starts_a_new_bucket():
    limiter = RateLimiter(clock=Clock())
    assert limiter.take(("a", "d"), 6) == 0.0
    assert limiter.take(("a", "d"), 6) > 0
    assert limiter.take(("a", "d"), 600) == 0.0
