from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.services.errors import ValidationFailed
from app.services.pagination import decode_cursor, encode_cursor, parse_limit

TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=20)


@given(st.dictionaries(TEXT, st.one_of(st.integers(), TEXT), max_size=4))
def test_cursor_round_trips(values: dict[str, object]) -> None:
    assert decode_cursor(encode_cursor(values)) == values


def test_cursor_with_nul_is_refused() -> None:
    with pytest.raises(ValidationFailed):
        decode_cursor(encode_cursor({"i": "\x00"}))


@pytest.mark.parametrize("cursor", ["%%%", "bm90IGpzb24", encode_cursor({"a": 1})[:-3] + "!!", "WzFd"])
def test_foreign_cursor_is_a_validation_error(cursor: str) -> None:
    with pytest.raises(ValidationFailed):
        decode_cursor(cursor)


@pytest.mark.parametrize("raw", ["0", "-1", "201", "ten", "1.5"])
def test_bad_limits(raw: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_limit(raw)


def test_limit_default_and_bounds() -> None:
    assert parse_limit(None) == 50
    assert parse_limit("1") == 1
    assert parse_limit("200") == 200
