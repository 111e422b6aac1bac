"""The lock-history checker finds what it is meant to find, and nothing in a clean history: a
checker that cannot fail would prove nothing about the server."""

from __future__ import annotations

import pytest

from tests.lock_history import EXCLUSIVE, SHARED, Record, check, conflicts, covers, overlaps

GPU = {"gpu:pool": 2}


def rec(agent, claims, start, end, fences=None, requested=None):
    """A record holding `claims` ({name: mode}) over [start, end], with token 1 each unless given."""
    fences = fences if fences is not None else dict.fromkeys(claims, 1)
    return Record(agent, list(claims.items()), fences, start, end, requested_at=requested, label=agent)


def kinds(records, capacities=None):
    return sorted({v.kind for v in check(records, capacities)})


def test_the_conflict_rule():
    assert covers("repo:/src/**", "repo:/src/app.py")
    assert covers("repo:/src/**", "repo:/src")
    assert covers("repo:/src/**", "repo:/src/lib/**")
    assert not covers("repo:/src/**", "repo:/srcs/app.py")
    assert not covers("repo:/src/app.py", "repo:/src/**")
    assert overlaps("repo:/src/app.py", "repo:/src/**") and overlaps("repo:/src/**", "repo:/src/app.py")
    assert not overlaps("repo:/src/lib/**", "repo:/src/app.py")
    assert not overlaps("device:1", "device:10")
    ex, sh = EXCLUSIVE, SHARED
    assert conflicts(("repo:/src/**", sh), ("repo:/src/app.py", ex), {})
    assert not conflicts(("repo:/src/**", sh), ("repo:/src/app.py", sh), {})
    assert conflicts(("gpu:pool", ex), ("gpu:pool", ex), {})
    assert not conflicts(("gpu:pool", ex), ("gpu:pool", ex), GPU)  # counted, not paired


def test_a_clean_history_passes():
    records = [
        rec("a", {"device:1": EXCLUSIVE}, 0.0, 1.0, {"device:1": 1}),
        rec("b", {"device:1": EXCLUSIVE}, 1.0, 2.0, {"device:1": 2}),  # touching is not overlapping
        rec("c", {"repo:/src/**": SHARED}, 0.5, 3.0, {"repo:/src/**": 1}),
        rec("d", {"repo:/src/app.py": SHARED, "device:2": EXCLUSIVE}, 0.6, 2.5),
        rec("e", {"repo:/src/lib/**": SHARED}, 0.7, 1.5),
        rec("f", {"repo:/docs/a.md": EXCLUSIVE}, 0.5, 3.0),  # a sibling of the src tree
        rec("g", {"gpu:pool": EXCLUSIVE}, 0.0, 2.0, {"gpu:pool": 1}),
        rec("h", {"gpu:pool": EXCLUSIVE}, 0.5, 1.0, {"gpu:pool": 2}),  # two slots: capacity 2
        rec("i", {"gpu:pool": EXCLUSIVE}, 1.0, 3.0, {"gpu:pool": 3}),
        rec("j", {"repo:/src/**": EXCLUSIVE}, 3.0, 4.0, {"repo:/src/**": 2}),
    ]
    assert check(records, GPU) == []


def test_overlapping_exclusive_holders_are_caught():
    records = [
        rec("a", {"device:1": EXCLUSIVE}, 0.0, 1.0, {"device:1": 1}),
        rec("b", {"device:1": EXCLUSIVE}, 0.9, 2.0, {"device:1": 2}),
    ]
    violations = check(records)
    assert [v.kind for v in violations] == ["overlap"]
    assert "device:1" in violations[0].detail


def test_shared_and_exclusive_overlap_is_caught_but_two_shared_are_fine():
    reader = rec("a", {"db:x": SHARED}, 0.0, 1.0, {"db:x": 1})
    assert check([reader, rec("b", {"db:x": SHARED}, 0.5, 1.5, {"db:x": 2})]) == []
    assert kinds([reader, rec("b", {"db:x": EXCLUSIVE}, 0.5, 1.5, {"db:x": 2})]) == ["overlap"]


@pytest.mark.parametrize(
    ("tree", "file"),
    [
        ("repo:/src/**", "repo:/src/app.py"),
        ("repo:/src/**", "repo:/src/lib/**"),
        ("repo:/src/lib/**", "repo:/src/lib/deep/x.py"),
        ("repo:/src/**", "repo:/src"),
    ],
)
def test_a_subtree_overlapping_a_name_under_it_is_caught_both_ways(tree, file):
    for first, then in ((tree, file), (file, tree)):
        records = [rec("a", {first: EXCLUSIVE}, 0.0, 1.0), rec("b", {then: SHARED}, 0.5, 1.5)]
        assert kinds(records) == ["overlap"], (first, then)


def test_siblings_of_a_subtree_do_not_overlap():
    records = [
        rec("a", {"repo:/src/**": EXCLUSIVE}, 0.0, 1.0),
        rec("b", {"repo:/srcs/app.py": EXCLUSIVE}, 0.0, 1.0),
        rec("c", {"repo:/src/lib/**": EXCLUSIVE}, 2.0, 3.0),
        rec("d", {"repo:/src/app.py": EXCLUSIVE}, 2.0, 3.0),
    ]
    assert check(records) == []


def test_a_semaphore_over_capacity_is_caught():
    records = [
        rec("a", {"gpu:pool": EXCLUSIVE}, 0.0, 3.0, {"gpu:pool": 1}),
        rec("b", {"gpu:pool": EXCLUSIVE}, 1.0, 2.0, {"gpu:pool": 2}),
        rec("c", {"gpu:pool": EXCLUSIVE}, 1.5, 4.0, {"gpu:pool": 3}),
    ]
    assert kinds(records, GPU) == ["capacity"]
    assert check(records, {"gpu:pool": 3}) == []
    assert kinds(records) == ["overlap"]  # not a semaphore at all: one holder at a time


def test_a_semaphore_does_not_excuse_an_overlapping_other_name():
    records = [
        rec("a", {"gpu:pool": EXCLUSIVE}, 0.0, 1.0),
        rec("b", {"gpu:pool/**": EXCLUSIVE}, 0.5, 1.5),
    ]
    assert kinds(records, GPU) == ["overlap"]


def test_a_non_monotonic_fence_is_caught():
    records = [
        rec("a", {"device:1": EXCLUSIVE}, 0.0, 1.0, {"device:1": 5}),
        rec("b", {"device:1": EXCLUSIVE}, 2.0, 3.0, {"device:1": 4}),
    ]
    violations = check(records)
    assert [v.kind for v in violations] == ["fence_order"]
    assert "token 5" in violations[0].detail and "token 4" in violations[0].detail


def test_a_fence_going_backwards_across_a_subtree_name_is_caught_per_name():
    # Each exact name has its own counter: repo:/src/** and repo:/src/app.py are not compared.
    records = [
        rec("a", {"repo:/src/**": EXCLUSIVE}, 0.0, 1.0, {"repo:/src/**": 7}),
        rec("b", {"repo:/src/app.py": EXCLUSIVE}, 2.0, 3.0, {"repo:/src/app.py": 1}),
    ]
    assert check(records) == []
    records.append(rec("c", {"repo:/src/**": SHARED}, 4.0, 5.0, {"repo:/src/**": 7}))
    assert kinds(records) == ["fence_duplicate", "fence_order"]


def test_a_shared_token_repeated_is_caught_even_when_the_holds_overlap():
    records = [
        rec("a", {"db:x": SHARED}, 0.0, 2.0, {"db:x": 3}),
        rec("b", {"db:x": SHARED}, 1.0, 3.0, {"db:x": 3}),
    ]
    assert kinds(records) == ["fence_duplicate"]


def test_shared_holders_are_ordered_by_fence_only_when_the_request_followed_the_release():
    # b may have been granted before a, its reply arriving after a was gone: no violation...
    a = rec("a", {"db:x": SHARED}, 1.0, 2.0, {"db:x": 2})
    late_reply = rec("b", {"db:x": SHARED}, 3.0, 4.0, {"db:x": 1}, requested=0.5)
    assert check([a, late_reply]) == []
    # ...but a request sent after a's release must get a later token.
    after = rec("b", {"db:x": SHARED}, 3.0, 4.0, {"db:x": 1}, requested=2.5)
    assert kinds([a, after]) == ["fence_order"]
    # Semaphore slots likewise.
    slot = rec("a", {"gpu:pool": EXCLUSIVE}, 1.0, 2.0, {"gpu:pool": 2})
    assert check([slot, rec("b", {"gpu:pool": EXCLUSIVE}, 3.0, 4.0, {"gpu:pool": 1}, requested=0.5)], GPU) == []
    assert kinds([slot, rec("b", {"gpu:pool": EXCLUSIVE}, 3.0, 4.0, {"gpu:pool": 1}, requested=2.5)], GPU) == [
        "fence_order"
    ]


def test_a_missing_fence_is_caught():
    records = [rec("a", {"device:1": EXCLUSIVE, "device:2": SHARED}, 0.0, 1.0, {"device:1": 1, "device:2": 0})]
    assert kinds(records) == ["fence_missing"]
    assert kinds([rec("a", {"device:1": EXCLUSIVE}, 0.0, 1.0, {})]) == ["fence_missing"]


def test_every_violation_is_reported_not_just_the_first():
    records = [
        rec("a", {"device:1": EXCLUSIVE}, 0.0, 1.0, {"device:1": 2}),
        rec("b", {"device:1": EXCLUSIVE}, 0.5, 1.5, {"device:1": 3}),
        rec("c", {"device:1": EXCLUSIVE}, 2.0, 3.0, {"device:1": 1}),
    ]
    found = check(records)
    assert sorted(v.kind for v in found) == ["fence_order", "fence_order", "overlap"]
