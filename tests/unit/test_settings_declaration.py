"""The settings are declared once: configure()'s signature and the README's table must follow OPTIONS."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from meshmetrics._setup.provider import configure
from meshmetrics._setup.settings import ARGUMENTS, OPTIONS, resolve

# configure() keywords that are not settings: what to add to the provider, and how to install it
NOT_SETTINGS = {"readers", "views", "set_global", "shutdown_on_exit", "environ"}
GROUPS = ("identity", "endpoint", "security", "otlp", "timing", "recording", "workers")
README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_rows() -> list[tuple[list[str], list[str], str]]:
    """(argument names, variables, default) of each row of the README's configuration table."""
    section = README.read_text(encoding="utf-8").split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "argument":
            continue
        names = re.findall(r"`([a-z_]+)`", cells[0])
        variables = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[1])
        if names or variables:
            rows.append((names, variables, cells[2]))
    return rows


def test_configure_signature_follows_the_declaration():
    parameters = inspect.signature(configure).parameters
    assert set(parameters) == set(ARGUMENTS) | NOT_SETTINGS
    for name in ARGUMENTS:
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameters[name].default is None, (
            f"{name}: None means 'not given' (then variable, then default)"
        )


def test_resolve_accepts_exactly_the_declared_keywords():
    settings = resolve(environ={}, **dict.fromkeys(ARGUMENTS))
    assert settings == resolve(environ={})


def test_declaration_is_complete_and_unambiguous():
    variables = [variable for option in OPTIONS for variable in option.env]
    assert len(variables) == len(set(variables)), "a variable declared by two options"
    assert len(ARGUMENTS) == len(set(ARGUMENTS))
    for option in OPTIONS:
        assert option.group in GROUPS, option
        assert option.doc and option.default, option
        assert option.name or option.env, option
    # grouped: each group's options are declared together
    order = [option.group for option in OPTIONS]
    assert order == sorted(order, key=GROUPS.index)


def test_readme_configuration_table_follows_the_declaration():
    """Fails until README.md's configuration table is the one generated from OPTIONS (see the report)."""
    rows = _readme_rows()
    documented = {name for names, _, _ in rows for name in names}
    assert documented == set(inspect.signature(configure).parameters), (
        f"missing from README: {sorted((set(ARGUMENTS) | NOT_SETTINGS) - documented)}; "
        f"not a configure() keyword: {sorted(documented - set(ARGUMENTS) - NOT_SETTINGS)}"
    )
    by_name = {name: (variables, default) for names, variables, default in rows for name in names}
    by_variables = {tuple(variables): default for names, variables, default in rows if not names}
    for option in OPTIONS:
        if option.name is None:
            assert by_variables.get(option.env) == option.default, option.env
            continue
        variables, default = by_name[option.name]
        assert tuple(variables) == option.env, option.name
        assert default == option.default, option.name


class _StopError(Exception):
    pass


def test_configure_forwards_every_setting_keyword_unchanged(monkeypatch):
    from meshmetrics._setup import settings as settings_module

    received: dict[str, object] = {}

    def capture(*, environ: object = None, **arguments: object) -> None:
        received.update(arguments, environ=environ)
        raise _StopError

    monkeypatch.setattr(settings_module, "resolve", capture)
    given: dict[str, object] = {name: object() for name in ARGUMENTS}
    environ: dict[str, str] = {}
    with pytest.raises(_StopError):
        configure(**given, environ=environ)  # type: ignore[arg-type]
    assert received == {**given, "environ": environ}
