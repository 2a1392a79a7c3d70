"""PairRunner: phases on two threads with a barrier between them, and what happens on an error."""
import threading
import time

import pytest

from minivae.fast.threads import PairRunner


def recorder():
    events, lock = [], threading.Lock()

    def task(name, seconds=0.0, result=None, error=None):
        def run():
            with lock:
                events.append(("start", name))
            time.sleep(seconds)
            if error is not None:
                raise error
            with lock:
                events.append(("end", name))
            return result
        return run
    return events, task


def test_run_phases_waits_for_both_sides_at_every_boundary():
    events, task = recorder()
    boundaries = []
    runner = PairRunner()
    phases = [(task("m1", 0.05, 1), task("o1", 0.0, 2)),      # the worker finishes first
              (task("m2", 0.0, 3), task("o2", 0.05, 4)),      # then the caller does
              (task("m3", 0.0, 5), task("o3", 0.0, 6))]
    mains, others = runner.run_phases(phases, between=lambda: boundaries.append(list(events)))
    assert (mains, others) == ([1, 3, 5], [2, 4, 6])
    for k in (1, 2):   # nothing of phase k + 1 starts before both ends of phase k
        last_end = max(events.index(("end", f"{side}{k}")) for side in "mo")
        first_start = min(events.index(("start", f"{side}{k + 1}")) for side in "mo")
        assert last_end < first_start
    assert len(boundaries) == 2                              # between(): once per boundary,
    assert ("end", "m1") in boundaries[0] and ("end", "o1") in boundaries[0]   # after the phase
    assert not any(name.endswith("2") for _, name in boundaries[0])           # before the next
    assert runner.run(lambda: "a", lambda: "b") == ("a", "b")


@pytest.mark.parametrize("failing", ["main", "other", "between"])
def test_an_error_stops_both_sides_and_is_raised(failing):
    events, task = recorder()
    runner = PairRunner()
    error = ValueError(f"{failing} failed")
    phases = [(task("m1", 0.0 if failing == "main" else 0.03, error=error if failing == "main" else None),
               task("o1", 0.0 if failing == "other" else 0.03, error=error if failing == "other" else None)),
              (task("m2"), task("o2"))]

    def between():
        if failing == "between":
            raise error
    with pytest.raises(ValueError, match=f"{failing} failed"):
        runner.run_phases(phases, between=between)
    assert ("start", "m2") not in events and ("start", "o2") not in events
    assert runner.run(lambda: 1, lambda: 2) == (1, 2)   # the runner still works
