"""Loading the user's LoyaltyApp by module:attr, from the current folder too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from loyalty.app import LoyaltyApp, Program, load_app
from loyalty.errors import ConfigurationError


def test_default_app_has_the_default_program() -> None:
    assert list(load_app(None).programs) == ["default"]


def test_app_from_a_module_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_loyalty_app.py").write_text(
        "from loyalty.app import LoyaltyApp, Program\n"
        "app = LoyaltyApp(programs=[Program(name='tea')])\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert list(load_app("my_loyalty_app:app").programs) == ["tea"]
    finally:
        sys.modules.pop("my_loyalty_app", None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("examples.demo", "expected 'module:attribute'"),
        ("no_such_module_xyz:app", "cannot import 'no_such_module_xyz'"),
        ("examples.demo:nothing", "'nothing' is not a LoyaltyApp"),
    ],
)
def test_bad_app_specs_are_explained(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_app(spec)


def test_a_program_defined_twice_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="program 'a' is defined twice"):
        LoyaltyApp(programs=[Program(name="a"), Program(name="a")])
