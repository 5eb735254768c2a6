"""What a test may lack (an upstream fixture under ../shared, an extra): locally the test skips and
says what is missing and how to get it; under CI (`CI=true`) it fails instead of skipping."""
from __future__ import annotations

import pytest

from conftest import SHARED_FIXTURES, importorskip_or_fail, in_ci, require_fixture


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("TRUE", True), ("", False),
                                             ("false", False), ("0", False)])
def test_ci_is_read_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_a_missing_fixture_skips_locally_saying_where_it_belongs(monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    missing = tmp_path / "openvla_upstream_tiny"
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_fixture(missing)
    reason = str(skipped.value)
    assert str(missing) in reason and str(SHARED_FIXTURES) in reason and "ARCHITECTURE.md" in reason
    assert require_fixture(tmp_path) == tmp_path  # present: returned, nothing raised


def test_a_missing_fixture_fails_under_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="openvla_upstream_tiny not found.*CI=true"):
        require_fixture(tmp_path / "openvla_upstream_tiny")


def test_a_missing_extra_names_the_install_locally_and_fails_under_ci(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # importing it raises ImportError
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"tensorflow_datasets .*pip install -e '\.\[rlds\]'"):
        importorskip_or_fail("tensorflow_datasets")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="tensorflow_datasets.*CI=true"):
        importorskip_or_fail("tensorflow_datasets")
    assert importorskip_or_fail("json").__name__ == "json"
