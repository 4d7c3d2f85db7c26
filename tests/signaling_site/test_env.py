"""Settings from the environment: empty means unset, a bad value names the variable."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from signaling_site.env import env_bool, env_float, env_int, env_list, env_str


def test_unset_and_empty_give_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_TEST_X", "")
    assert env_str("EDGE_TEST_X", "d") == "d" and env_int("EDGE_TEST_X", 3) == 3
    assert env_float("EDGE_TEST_UNSET", 0.5) == 0.5 and env_bool("EDGE_TEST_X", True) is True


def test_values_are_cast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_TEST_X", "7")
    assert env_int("EDGE_TEST_X", 0) == 7 and env_float("EDGE_TEST_X", 0.0) == 7.0
    for word, value in (("On", True), ("yes", True), ("0", False), ("false", False)):
        monkeypatch.setenv("EDGE_TEST_B", word)
        assert env_bool("EDGE_TEST_B", not value) is value
    monkeypatch.setenv("EDGE_TEST_L", " a, b ,,c")
    assert env_list("EDGE_TEST_L", "") == ["a", "b", "c"]


@pytest.mark.parametrize(("reader", "raw"), [(env_int, "2.5"), (env_float, "abc"),
                                              (env_bool, "maybe")])
def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, reader: object,
                                        raw: str) -> None:
    monkeypatch.setenv("EDGE_TEST_BAD", raw)
    with pytest.raises(ImproperlyConfigured, match=f"EDGE_TEST_BAD='{raw}'"):
        reader("EDGE_TEST_BAD", 1)  # type: ignore[operator]
