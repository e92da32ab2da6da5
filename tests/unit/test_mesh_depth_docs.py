"""Every public name is documented: in README.md or the generated metric reference."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import meshmetrics
import meshmetrics.integrations

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md").read_text(encoding="utf-8") + (ROOT / "conventions" / "README.md").read_text(
    encoding="utf-8"
)
INTEGRATIONS = sorted(
    module.name
    for module in pkgutil.iter_modules(meshmetrics.integrations.__path__)
    if not module.name.startswith("_")
)


def mentioned(name: str, docs: str = DOCS) -> bool:
    """``name`` appears as a word, or as an attribute (``meshmetrics.current_handle``)."""
    return re.search(rf"(?<![\w]){re.escape(name)}(?!\w)", docs) is not None


def documented_parameters(function_name: str, function: object, docs: str = DOCS) -> list[str]:
    """Optional or keyword-only parameters of ``function`` that no ``name(... p=`` in the docs shows."""
    missing = []
    for parameter in inspect.signature(function).parameters.values():  # type: ignore[arg-type]
        keyword_only = parameter.kind is parameter.KEYWORD_ONLY
        optional = (
            parameter.kind is parameter.POSITIONAL_OR_KEYWORD and parameter.default is not parameter.empty
        )
        if not (keyword_only or optional):
            continue
        pattern = rf"{re.escape(function_name)}\([^)]*\b{re.escape(parameter.name)}="
        if re.search(pattern, docs) is None:
            missing.append(f"{function_name}({parameter.name}=)")
    return missing


def test_every_name_of_the_package_is_documented():
    assert [name for name in meshmetrics.__all__ if not mentioned(name)] == []


@pytest.mark.parametrize("module_name", INTEGRATIONS)
def test_every_public_name_and_option_of_an_integration_is_documented(module_name):
    module = importlib.import_module(f"meshmetrics.integrations.{module_name}")
    public = getattr(module, "__all__", None)
    assert public, f"meshmetrics.integrations.{module_name} declares no __all__"
    missing = [name for name in public if not mentioned(name)]
    for name in public:
        member = getattr(module, name)
        if inspect.isfunction(member):
            missing += documented_parameters(name, member)
    assert missing == [], f"meshmetrics.integrations.{module_name}: undocumented {missing}"


def test_the_check_catches_an_undocumented_option():
    def instrument_gadget(gadget: object, *, service: str = "", surprise: int = 0) -> None: ...

    docs = 'Wrap it: `instrument_gadget(gadget, service="users")`.'
    assert documented_parameters("instrument_gadget", instrument_gadget, docs) == [
        "instrument_gadget(surprise=)"
    ]
    assert mentioned("instrument_gadget", docs)
    assert not mentioned("instrument_gadge", docs)
    assert not mentioned("gadget_factory", docs)


def test_every_name_of_the_plugins_module_is_documented():
    import meshmetrics.plugins

    assert [name for name in meshmetrics.plugins.__all__ if not mentioned(name)] == []
