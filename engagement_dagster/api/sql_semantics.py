"""DuckDB's semantics for the SQL operations the online features use, in plain Python.

The generated module `features_generated` (see `features`) calls these where Python's own operators
would differ from DuckDB: IEEE division and logarithm (DuckDB returns inf/nan where Python raises),
integer range checks (DuckDB raises on overflow where Python ints grow), NaN ordering (DuckDB sorts NaN
above every number and holds NaN = NaN), three-valued logic, and GREATEST/LEAST (nulls skipped).
Arguments are never NULL unless the function says so: the generated code tests for None itself.
tests/test_api_features.py checks each against DuckDB on values that include the corner cases.
"""

from __future__ import annotations

import datetime
import math
from typing import NoReturn

INTEGER = "INTEGER"
BIGINT = "BIGINT"
INTEGER_RANGES = {INTEGER: (-(2**31), 2**31 - 1), BIGINT: (-(2**63), 2**63 - 1)}


class FeatureError(ValueError):
    """A value the feature SQL cannot compute (DuckDB would fail the dbt build on it), with the raw
    input columns it came from, so an API can answer 422 naming them."""

    def __init__(self, columns: tuple[str, ...], message: str):
        super().__init__(f"{', '.join(columns)}: {message}")
        self.columns = columns
        self.message = message
        self.row: int | None = None  # which of the rows given to online_features

    def errors(self, loc_prefix: tuple = ()) -> list[dict]:
        """In the shape of pydantic's (and FastAPI's 422) errors, one per raw column."""
        return [{"type": "value_error", "loc": (*loc_prefix, column), "msg": f"{column}: {self.message}"}
                for column in self.columns]


def out_of_range(value: int, type_name: str, columns: tuple[str, ...]) -> NoReturn:
    low, high = INTEGER_RANGES[type_name]
    raise FeatureError(columns, f"{value} is outside the range of the SQL type {type_name} ({low} to {high}) "
                                "that the dbt feature models compute it in")


def check_integer(value: int, type_name: str, columns: tuple[str, ...]) -> int:
    low, high = INTEGER_RANGES[type_name]
    if low <= value <= high:
        return value
    out_of_range(value, type_name, columns)


def div(a: float, b: float) -> float:
    """a / b for doubles, IEEE: x/0 is ±inf, 0/0 and nan/0 are nan."""
    if b:
        return a / b
    if a != a or a == 0:
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def ln(x: float) -> float:
    """Natural logarithm, IEEE: ln(0) = -inf, ln(negative) = nan."""
    if x > 0:
        return math.log(x)
    if x == 0:
        return -math.inf
    return math.nan  # negative or nan


def timestamp(day: datetime.date) -> datetime.datetime:
    """CAST(date AS TIMESTAMP): midnight of that day."""
    return datetime.datetime(day.year, day.month, day.day)


def day_diff(start: datetime.date, end: datetime.date) -> int:
    """date_diff('day', start, end): day boundaries crossed (toordinal ignores a datetime's time of day)."""
    return end.toordinal() - start.toordinal()


# Three-valued logic: None is SQL's unknown.
def and3(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


def or3(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    if a is None or b is None:
        return None
    return False


def not3(a: bool | None) -> bool | None:
    return None if a is None else not a


def _order(x: float) -> tuple[int, float]:
    """DuckDB's order of doubles: NaN above every number, and equal to itself."""
    return (1, 0.0) if x != x else (0, x)


def double_lt(a: float, b: float) -> bool:
    return _order(a) < _order(b)


def double_le(a: float, b: float) -> bool:
    return _order(a) <= _order(b)


def double_gt(a: float, b: float) -> bool:
    return _order(a) > _order(b)


def double_ge(a: float, b: float) -> bool:
    return _order(a) >= _order(b)


def double_eq(a: float, b: float) -> bool:
    return _order(a) == _order(b)


def double_ne(a: float, b: float) -> bool:
    return _order(a) != _order(b)


def greatest(*values):
    """GREATEST: nulls skipped (null only when all are), NaN above every number, the first of equals."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return max(present, key=_order) if isinstance(present[0], float) else max(present)


def least(*values):
    present = [v for v in values if v is not None]
    if not present:
        return None
    return min(present, key=_order) if isinstance(present[0], float) else min(present)
