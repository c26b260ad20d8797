"""The memory store's sorted key index (used by ``scan``) against a plain sorted set."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from convthread.stores.memory import _SortedKeys

KEYS = st.text(alphabet="ab|é", max_size=4)


class _Small(_SortedKeys):
    """Rebuilds after a handful of writes, so runs exercise every state."""

    __slots__ = ()
    REBUILD_AT = 3


class SortedKeysMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.index = _Small()
        self.model: set[str] = set()

    @rule(key=KEYS)
    def add_or_remove(self, key: str) -> None:
        if key in self.model:
            self.index.remove(key)
            self.model.discard(key)
        else:
            self.index.add(key)
            self.model.add(key)

    @rule(prefix=st.text(alphabet="ab|é", max_size=2), after=KEYS, limit=st.integers(0, 6))
    def page(self, prefix: str, after: str, limit: int) -> None:
        ordered = sorted(k for k in self.model if k.startswith(prefix) and (not after or k > after))
        assert self.index.page(prefix, after, limit) == ordered[:limit]

    @invariant()
    def holds_each_key_once(self) -> None:
        everything = self.index.page("", "", 10_000)
        assert everything == sorted(self.model)


TestSortedKeys = SortedKeysMachine.TestCase
TestSortedKeys.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@given(st.lists(KEYS, unique=True, max_size=50))
def test_a_rebuild_keeps_every_key(keys: list[str]) -> None:
    index = _Small()
    for k in keys:
        index.add(k)
    for k in keys[::2]:
        index.remove(k)
    assert index.page("", "", 1000) == sorted(keys[1::2])
