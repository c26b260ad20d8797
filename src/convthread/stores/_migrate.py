"""Schema migrations of the SQL stores: what a step is, and what is pending.

A store's ``MIGRATIONS`` maps each schema version to the step that makes it:

* a tuple of SQL statements, run in order; or
* a Python function ``step(conn, progress)`` for changes SQL cannot express (decoding
  rows, copying a big table in chunks). It gets the store's driver connection, inside
  the step's transaction, and calls ``progress(done, total)`` (rows, say) as it goes.
  Its docstring's first line says what it does (``convthread migrate --dry-run`` shows it).

Each step runs in a transaction of its own, which also records the version it reaches:
a step is applied completely or not at all, and an interrupted migration resumes at the
first step not recorded. Never edit a released step; add the next version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeAlias

import msgspec

from convthread.errors import SchemaError

__all__ = [
    "MigrationProgress",
    "PendingStep",
    "Progress",
    "PythonStep",
    "SchemaStatus",
    "SqlStep",
    "Step",
    "pending_steps",
]

#: ``progress(done, total)``: how far a step is (``total`` may be 0 when unknown).
Progress: TypeAlias = Callable[[int, int], None]
#: ``progress(version, done, total)``: how far the step making ``version`` is.
MigrationProgress: TypeAlias = Callable[[int, int, int], None]
SqlStep: TypeAlias = tuple[str, ...]
PythonStep: TypeAlias = Callable[[Any, Progress], None]
Step: TypeAlias = SqlStep | PythonStep


class PendingStep(msgspec.Struct, frozen=True):
    """A step not yet applied: the version it makes, its kind, what it does."""

    version: int
    kind: Literal["sql", "python"]
    description: str


class SchemaStatus(msgspec.Struct, frozen=True):
    """Where a database's schema stands: the version it has (0: none yet), the version
    this convthread writes, and the steps between them, in the order they run."""

    store: str
    current: int
    target: int
    pending: tuple[PendingStep, ...] = ()

    @property
    def up_to_date(self) -> bool:
        return self.current == self.target


def describe(version: int, step: Step) -> PendingStep:
    if isinstance(step, tuple):
        first = " ".join(step[0].split())[:70] if step else "nothing"
        more = f" (+{len(step) - 1} statements)" if len(step) > 1 else ""
        return PendingStep(version, "sql", f"{first}{more}")
    doc = (step.__doc__ or step.__name__).strip().splitlines()[0]
    return PendingStep(version, "python", doc)


def pending_steps(
    migrations: Mapping[int, Step], current: int, where: str
) -> list[tuple[int, Step]]:
    """The steps after ``current``, in order; SchemaError if ``current`` is newer than
    every step (a database written by a later convthread)."""
    target = max(migrations)
    if current > target:
        raise SchemaError(
            f"{where} has schema version {current}; this convthread knows up to {target}. "
            "Upgrade convthread to open it (a database is never migrated backwards)."
        )
    return [(v, migrations[v]) for v in sorted(migrations) if v > current]


def status(migrations: Mapping[int, Step], current: int, where: str) -> SchemaStatus:
    steps = pending_steps(migrations, current, where)
    return SchemaStatus(where, current, max(migrations), tuple(describe(v, s) for v, s in steps))
