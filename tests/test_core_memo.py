"""The shared LRU behind the model, prediction and dataset memos."""

from __future__ import annotations

from gnomon.core.memo import LRU


def test_least_recently_used_entries_go_first_by_size():
    limit = {"value": 10}
    lru = LRU(lambda: limit["value"], size=len)
    lru.put("a", "xxxx")
    lru.put("b", "xxxx")
    assert lru.get("a") == "xxxx"  # "a" is now the most recent
    assert lru.put("c", "xxxx") == ["b"]
    assert list(lru.entries) == ["a", "c"]
    assert lru.put("huge", "x" * 11) == ["huge"] and "huge" not in lru  # alone larger than the limit
    limit["value"] = 0  # read at use time: a limit of 0 switches the memo off
    assert lru.put("d", "x") == ["d", "a", "c"]
    assert len(lru) == 0 and lru.get("a") is None
