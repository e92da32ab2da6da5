"""A registry's YAML, read with the line of every mapping, sequence and key, for errors that name it.

PyYAML is needed to read a registry (``pip install 'meshmetrics[plugins]'``);
nothing else in meshmetrics imports it. Whatever it cannot read or build
becomes one :class:`ConventionsError` line, never a traceback.
"""

from __future__ import annotations

from typing import Any

from meshmetrics._errors import ConfigurationError

_SHOWN_CHARS = 200  # of a YAML library's message, in an error


class ConventionsError(ConfigurationError):
    """A conventions registry breaks a rule: ``file:line: where: rule``, on one line."""


class YamlMap(dict[str, Any]):
    """A YAML mapping that remembers where it and each of its keys stand."""

    line = 0
    key_lines: dict[str, int]


class YamlList(list[Any]):
    """A YAML sequence that remembers where it stands."""

    line = 0


def parse(text: str, source: str) -> Any:
    try:
        import yaml  # noqa: PLC0415 - optional: only reading a registry needs it
    except ImportError as missing:
        raise ConventionsError(
            f"{source}: reading a conventions file needs PyYAML; install meshmetrics[plugins]"
        ) from missing

    class Loader(yaml.SafeLoader):
        """SafeLoader whose mappings and sequences carry their line numbers."""

    def mapping(loader: Loader, node: yaml.MappingNode) -> YamlMap:
        loader.flatten_mapping(node)
        result = YamlMap()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise ConventionsError(
                    f"{source}:{key_node.start_mark.line + 1}: key {key!r}: keys must be strings"
                )
            if key in result:
                raise ConventionsError(
                    f"{source}:{key_node.start_mark.line + 1}: key {key!r}: given twice in one mapping"
                )
            result[key] = loader.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result

    def sequence(loader: Loader, node: yaml.SequenceNode) -> YamlList:
        result = YamlList(loader.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        return result

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, sequence)
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except ConventionsError:
        raise
    except Exception as error:  # whatever PyYAML cannot read or build: one line, no traceback
        raise _yaml_error(error, source) from None


def _yaml_error(error: Exception, source: str) -> ConventionsError:
    import yaml  # noqa: PLC0415 - as in _parse

    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = " ".join(str(error.problem or error.context or "invalid").split())
        return ConventionsError(f"{where}: YAML syntax error: {problem}")
    if isinstance(error, RecursionError):
        return ConventionsError(f"{source}: YAML error: nested too deeply to be a registry")
    # a YAMLError, or a value PyYAML cannot build (a 5,000-digit integer...): in its words
    return ConventionsError(f"{source}: YAML error: {type(error).__name__}: {_shown(error)}")


def _shown(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
