"""A plugin registry that breaks a rule fails configure() and `generate` with one line: file, line, key, rule.

Every malformed plugin here is the example plugin (examples/plugins/ratelimit/ratelimit.yaml) with one
edit, so each test proves that one rule, and the line an error names is found by searching the edited
text, never written down. The generated module is checked by mypy --strict and by inspection.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import meshmetrics
from meshmetrics import semconv
from meshmetrics.__main__ import main
from meshmetrics._conventions import ucum
from meshmetrics._conventions.loader import load
from meshmetrics.plugins import ConventionsError
from tests.conftest import import_path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plugins" / "ratelimit" / "ratelimit.yaml"
BASE = EXAMPLE.read_text(encoding="utf-8")
QUIET = {"prometheus": False, "set_global": False, "shutdown_on_exit": False}


@dataclass(frozen=True)
class Edit:
    """One edit of the example: ``old`` (present in it) becomes ``new``.

    ``mark`` is text of ``new`` on the line the error must name (its last occurrence in ``new``);
    ``words`` must all be in the message: the key, and the words of the rule.
    """

    old: str
    new: str
    mark: str
    words: tuple[str, ...]


EDITS = {
    "redefines mesh.service": Edit(
        "      - id: ratelimit.client\n",
        "      - id: mesh.service\n",
        "id: mesh.service",
        ("'mesh.service'", "meshmetrics' own attribute", "never redefines"),
    ),
    "takes a mesh.* metric name": Edit(
        "  - id: metric.ratelimit.decisions\n    type: metric\n    metric_name: ratelimit.decisions\n",
        "  - id: metric.mesh.ratelimit.decisions\n    type: metric\n    metric_name: mesh.ratelimit.decisions\n",
        "metric_name: mesh.ratelimit.decisions",
        ("'mesh.ratelimit.decisions'", "names under mesh.", "own namespace"),
    ),
    "takes a meshmetrics.* attribute name": Edit(
        "      - id: ratelimit.client\n",
        "      - id: meshmetrics.client\n",
        "id: meshmetrics.client",
        ("'meshmetrics.client'", "meshmetrics.", "own namespace"),
    ),
    "unknown instrument kind": Edit(
        "instrument: updowncounter",
        "instrument: summary",
        "instrument: summary",
        ("instrument", "'summary'", "is not one of", "counter", "histogram", "gauge"),
    ),
    "unit seconds": Edit(
        "    unit: s\n",
        "    unit: seconds\n",
        "unit: seconds",
        ("unit", "'seconds'", "not UCUM", "did you mean 's'"),
    ),
    "unit with an unclosed annotation": Edit(
        'unit: "{decision}"',
        'unit: "{decision"',
        'unit: "{decision"',
        ("unit", "'{decision'", "not UCUM"),
    ),
    "unit kmin": Edit(
        "    unit: s\n",
        '    unit: "kmin"\n',
        'unit: "kmin"',
        ("unit", "'kmin'", "not UCUM"),
    ),
    "buckets not increasing": Edit(
        "buckets: [0.001, 0.005, 0.01,",
        "buckets: [0.001, 0.01, 0.005,",
        "buckets:",
        ("buckets", "strictly increasing", "0.005 after 0.01"),
    ),
    "buckets with a duplicate": Edit(
        "buckets: [0.001, 0.005, 0.01,",
        "buckets: [0.001, 0.005, 0.005, 0.01,",
        "buckets:",
        ("buckets", "strictly increasing", "0.005 after 0.005"),
    ),
    "YAML bad indentation": Edit(
        "    brief: Decisions of the rate limiter, by outcome.\n",
        "     brief: Decisions of the rate limiter, by outcome.\n",
        "brief: Decisions",
        ("YAML syntax error",),
    ),
    "duplicate key": Edit(
        '    unit: "{decision}"\n',
        '    unit: "{decision}"\n    unit: "{decision}"\n',
        "unit:",
        ("'unit'", "given twice"),
    ),
    "unknown annotations.meshmetrics key": Edit(
        "        buckets_reason:",
        "        bukets: [1, 2]\n        buckets_reason:",
        "bukets:",
        ("bukets", "unknown key", "allowed:", "buckets"),
    ),
    "ref to an undefined attribute": Edit(
        "      - {ref: ratelimit.client, requirement_level: recommended}",
        "      - {ref: ratelimit.tenant, requirement_level: recommended}",
        "ref: ratelimit.tenant",
        ("'ratelimit.tenant'", "is not defined"),
    ),
}


def line_number(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def edited(tmp_path: Path, edit: Edit, name: str = "plugin.yaml") -> tuple[Path, int]:
    """The example with ``edit`` made, written to ``tmp_path/name``, and the line of ``edit.mark``."""
    assert BASE.count(edit.old) >= 1, f"the example no longer holds {edit.old!r}"
    start = BASE.index(edit.old)
    text = BASE.replace(edit.old, edit.new, 1)
    assert edit.mark in edit.new
    line = line_number(text, start + edit.new.rindex(edit.mark))
    assert edit.mark in text.splitlines()[line - 1]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path, line


def copy_of_example(tmp_path: Path, name: str = "ratelimit.yaml", text: str = BASE) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def configured(**arguments: object) -> Iterator[meshmetrics.MetricsHandle]:
    handle = meshmetrics.configure(**QUIET, **arguments)
    try:
        yield handle
    finally:
        handle.shutdown()
        meshmetrics.shutdown()


def refused(**arguments: object) -> meshmetrics.ConfigurationError:
    """The error configure() raises for ``arguments``; a successful configure is shut down, then fails."""
    try:
        handle = meshmetrics.configure(**QUIET, **arguments)
    except meshmetrics.ConfigurationError as error:
        return error
    handle.shutdown()
    meshmetrics.shutdown()
    pytest.fail(f"configure({arguments}) accepted a malformed plugin")


def assert_one_line(error: BaseException) -> str:
    message = str(error)
    assert message
    assert "\n" not in message
    assert "\r" not in message
    assert "Traceback" not in message
    # nothing from inside the loader (yaml, KeyError, TypeError...) rides along as the cause
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return message


def assert_names_place(message: str, path: Path, line: int) -> None:
    assert message.startswith(f"{path}:{line}:"), f"{message!r} does not start with {path}:{line}:"


# --- a malformed plugin fails configure() ----------------------------------------------------------------


def test_the_unedited_example_is_accepted(tmp_path):
    """The control: every refusal below comes from its one edit."""
    path = copy_of_example(tmp_path)
    with configured(conventions=[path]) as handle:
        (plugin,) = handle.settings.conventions
        assert plugin.source == str(path)
        assert "ratelimit.decisions" in plugin.metrics
        assert "ratelimit.limiter" in plugin.attributes
        assert "mesh.service" not in plugin.attributes  # referenced, not redefined


@pytest.mark.parametrize("case", list(EDITS))
def test_a_malformed_plugin_fails_configure_with_file_line_key_and_rule(tmp_path, case):
    edit = EDITS[case]
    path, line = edited(tmp_path, edit)
    error = refused(conventions=[path])
    assert isinstance(error, ConventionsError)
    message = assert_one_line(error)
    assert_names_place(message, path, line)
    for word in edit.words:
        assert word in message, f"{word!r} not in {message!r}"


def test_a_yaml_syntax_error_names_the_line_it_is_found_on(tmp_path):
    edit = Edit('examples: ["tenant-42"]', 'examples: ["tenant-42"', "examples:", ())
    path, bracket = edited(tmp_path, edit)
    message = assert_one_line(refused(conventions=[path]))
    assert "YAML syntax error" in message
    found = re.match(rf"{re.escape(str(path))}:(\d+):\d+: ", message)
    assert found, message
    # PyYAML notices the unclosed bracket at the next token: that line, or the bracket's own
    assert int(found.group(1)) in {bracket, bracket + 1}, message


def test_a_gauge_without_a_multiprocess_rule_is_refused(tmp_path):
    edit = Edit("        multiprocess: sum\n", "", "", ())
    assert BASE.count(edit.old) == 1
    path = copy_of_example(tmp_path, text=BASE.replace(edit.old, ""))
    text = path.read_text(encoding="utf-8")
    group = text.index("metric_name: ratelimit.tokens.remaining")
    annotations = line_number(text, text.index("      meshmetrics:\n", group))
    message = assert_one_line(refused(conventions=[path]))
    found = re.match(rf"{re.escape(str(path))}:(\d+): ", message)
    assert found, message
    # the mapping that lacks the key: its `meshmetrics:` line, or its first key's
    assert int(found.group(1)) in {annotations, annotations + 1}, message
    assert "ratelimit.tokens.remaining" in message
    assert "a gauge needs multiprocess: one of sum, max, min, last, worker" in message


def test_a_missing_file_is_named_without_a_traceback(tmp_path):
    path = tmp_path / "nowhere" / "plugin.yaml"
    error = refused(conventions=[path])
    assert isinstance(error, ConventionsError)
    message = assert_one_line(error)
    assert message.startswith(f"{path}: ")
    assert "cannot read" in message


def test_a_metric_without_annotations_names_its_own_line(tmp_path):
    start = BASE.index("  - id: metric.ratelimit.waiting")
    text = BASE[:start] + BASE[start:].split("    annotations:")[0]
    path = copy_of_example(tmp_path, text=text)
    message = assert_one_line(refused(conventions=[path]))
    found = re.match(rf"{re.escape(str(path))}:(\d+): ", message)
    assert found, message
    first, last = line_number(text, start), text.count("\n")
    assert first <= int(found.group(1)) <= last, message


def test_a_bucket_bound_beyond_a_float_is_refused_not_an_overflow(tmp_path):
    edit = Edit("buckets: [0.001, 0.005, 0.01,", f"buckets: [0.001, 1{'0' * 400}, 0.01,", "buckets:", ())
    path, line = edited(tmp_path, edit)
    message = assert_one_line(refused(conventions=[path]))
    assert_names_place(message, path, line)
    assert "buckets" in message


# --- the same through MESHMETRICS_CONVENTIONS --------------------------------------------------------------


@pytest.mark.parametrize("case", ["unknown instrument kind", "duplicate key", "YAML bad indentation"])
def test_the_variable_reports_a_malformed_plugin_the_same_way(tmp_path, case):
    edit = EDITS[case]
    path, line = edited(tmp_path, edit)
    error = refused(environ={"MESHMETRICS_CONVENTIONS": str(path)})
    assert isinstance(error, ConventionsError)
    message = assert_one_line(error)
    assert_names_place(message, path, line)
    for word in edit.words:
        assert word in message


def test_the_variable_reports_a_missing_second_path(tmp_path):
    good = copy_of_example(tmp_path)
    missing = tmp_path / "missing.yaml"
    message = assert_one_line(refused(environ={"MESHMETRICS_CONVENTIONS": f"{good}{os.pathsep}{missing}"}))
    assert message.startswith(f"{missing}: ")


def test_the_variable_loads_two_plugins_separated_by_pathsep(tmp_path):
    first = copy_of_example(tmp_path, "ratelimit.yaml")
    other = BASE.replace("ratelimit.", "throttle.")
    second = copy_of_example(tmp_path, "throttle.yaml", other)
    with configured(environ={"MESHMETRICS_CONVENTIONS": f"{first}{os.pathsep}{second}"}) as handle:
        assert [plugin.source for plugin in handle.settings.conventions] == [str(first), str(second)]
        assert "throttle.decisions" in handle.settings.conventions[1].metrics


def test_two_plugins_that_define_one_metric_differently_name_both_files(tmp_path):
    old = '    unit: "{request}"\n'
    assert BASE.count(old) == 1
    first = copy_of_example(tmp_path, "first.yaml")
    second = copy_of_example(tmp_path, "second.yaml", BASE.replace(old, '    unit: "{waiter}"\n'))
    load(second, builtin=semconv.CONVENTIONS)  # each is valid alone: the conflict is between them
    error = refused(environ={"MESHMETRICS_CONVENTIONS": f"{first}{os.pathsep}{second}"})
    message = assert_one_line(error)
    assert str(first) in message
    assert str(second) in message
    assert "'ratelimit.waiting'" in message
    assert "defined differently" in message


# --- UCUM ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unit",
    [
        "s", "ms", "us", "By", "KiBy", "MiBy", "1", "%", "{request}", "{request}/s", "By/s", "bit/s", "Cel",
        "By{compressed}", "kBy", "m2", "s-1", "{tx.commit}", "{request/s}", "By/{packet.dropped}",
    ],
)  # fmt: skip
def test_ucum_accepts(unit):
    assert ucum.problem(unit) is None


@pytest.mark.parametrize(
    "unit",
    [
        "seconds", "sec", "bytes", "Sec", "kmin", "Kis", "KiS", "{unclosed", "", "ms ", "s/", "/s", "s..s",
        "mCel", "{a}{b}", "B", "{unclosed.s",
    ],
)  # fmt: skip
def test_ucum_rejects(unit):
    problem = ucum.problem(unit)
    assert problem
    assert "\n" not in problem


@pytest.mark.parametrize(
    ("unit", "hint"), [("seconds", "s"), ("sec", "s"), ("bytes", "By"), ("milliseconds", "ms")]
)
def test_ucum_suggests_the_unit_meant(unit, hint):
    assert f"did you mean {hint!r}?" in (ucum.problem(unit) or "")


# --- python -m meshmetrics generate ----------------------------------------------------------------------


@dataclass(frozen=True)
class Outputs:
    registry: Path
    output: Path
    reference: Path
    dashboard: Path
    rules: Path

    def argv(self, *, check: bool = False) -> list[str]:
        argv = ["generate", str(self.registry), "--output", str(self.output)]
        argv += ["--reference", str(self.reference), "--dashboard", str(self.dashboard)]
        argv += ["--rules", str(self.rules)]
        return [*argv, "--check"] if check else argv

    def files(self) -> list[Path]:
        return [self.output, self.reference, self.dashboard, self.rules]


@pytest.fixture
def outputs(tmp_path) -> Outputs:
    out = tmp_path / "out"
    return Outputs(copy_of_example(tmp_path), out / "mod.py", out / "x.md", out / "x.json", out / "x.yaml")


def stale_files(stderr: str) -> set[str]:
    found = re.search(r"^stale: (.*); run `", stderr, re.MULTILINE)
    assert found, stderr
    return set(found.group(1).split(", "))


def test_generate_writes_four_outputs_then_check_finds_them_current(outputs, capsys):
    assert main(outputs.argv()) == 0
    written = capsys.readouterr()
    for path in outputs.files():
        assert path.is_file()
        assert path.read_text(encoding="utf-8").strip()
        assert f"wrote {path}" in written.out
    compile(outputs.output.read_text(encoding="utf-8"), str(outputs.output), "exec")
    assert "ratelimit.decisions" in outputs.reference.read_text(encoding="utf-8")
    assert isinstance(json.loads(outputs.dashboard.read_text(encoding="utf-8")), dict)
    assert yaml.safe_load(outputs.rules.read_text(encoding="utf-8"))

    assert main(outputs.argv(check=True)) == 0
    checked = capsys.readouterr()
    assert checked.err == ""
    assert "wrote" not in checked.out


def test_check_after_an_edit_fails_and_names_the_stale_files(outputs, capsys):
    assert main(outputs.argv()) == 0
    before = {path: path.read_text(encoding="utf-8") for path in outputs.files()}
    old = "brief: Decisions of the rate limiter, by outcome."
    text = outputs.registry.read_text(encoding="utf-8")
    assert text.count(old) == 1
    outputs.registry.write_text(text.replace(old, "brief: What the limiter decided."), encoding="utf-8")
    capsys.readouterr()

    assert main(outputs.argv(check=True)) == 1
    stale = stale_files(capsys.readouterr().err)
    assert {path: path.read_text(encoding="utf-8") for path in outputs.files()} == before  # nothing written
    assert str(outputs.output) in stale
    assert str(outputs.reference) in stale

    assert main(outputs.argv()) == 0
    changed = {str(path) for path in outputs.files() if path.read_text(encoding="utf-8") != before[path]}
    assert stale == changed  # exactly the files that regenerating changes
    capsys.readouterr()
    assert main(outputs.argv(check=True)) == 0


@pytest.mark.parametrize("case", ["unknown instrument kind", "duplicate key", "YAML bad indentation"])
def test_generate_refuses_a_malformed_registry_with_exit_2_and_one_line(tmp_path, capsys, case):
    registry, line = edited(tmp_path, EDITS[case])
    output = tmp_path / "mod.py"
    assert main(["generate", str(registry), "--output", str(output)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("\n")
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"meshmetrics generate: {registry}:{line}:")
    assert not output.exists()


def test_generate_as_a_process_exits_2_without_a_traceback(tmp_path):
    registry, line = edited(tmp_path, EDITS["ref to an undefined attribute"])
    output = tmp_path / "mod.py"
    result = subprocess.run(
        [sys.executable, "-m", "meshmetrics", "generate", str(registry), "--output", str(output), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"meshmetrics generate: {registry}:{line}:")
    assert "'ratelimit.tenant'" in lines[0]
    assert not output.exists()


def test_generate_names_a_missing_registry(tmp_path, capsys):
    registry = tmp_path / "missing.yaml"
    assert main(["generate", str(registry), "--output", str(tmp_path / "mod.py")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"meshmetrics generate: {registry}: cannot read")


def test_check_gives_the_same_answer_from_any_working_directory_and_with_fewer_outputs(
    outputs, capsys, monkeypatch
):
    assert main(outputs.argv()) == 0
    monkeypatch.chdir(outputs.output.parent)  # elsewhere, with paths of another form
    relative = ["generate", os.path.relpath(outputs.registry), "--output", outputs.output.name, "--check"]
    assert main(relative) == 0, capsys.readouterr().err
    assert main(["generate", str(outputs.registry), "--rules", str(outputs.rules), "--check"]) == 0


@pytest.mark.parametrize("where", ["a directory", "the registry"])
def test_generate_refuses_an_output_it_cannot_or_must_not_write(outputs, capsys, where):
    target = outputs.output.parent if where == "a directory" else outputs.registry
    if where == "a directory":
        target.mkdir(parents=True, exist_ok=True)
    before = outputs.registry.read_text(encoding="utf-8")
    assert main(["generate", str(outputs.registry), "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(target) in err
    assert outputs.registry.read_text(encoding="utf-8") == before


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("groups: " + "[" * 400 + "]" * 400 + "\n", "nested too deeply"),
        ("groups:\n  - id: " + "9" * 5000 + "\n", "YAML error: ValueError"),
        ("\x00\x01binary", "YAML"),
    ],
    ids=["deep", "huge integer", "binary"],
)
def test_yaml_that_pyyaml_cannot_build_is_one_line_too(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    error = refused(conventions=[path])
    assert isinstance(error, ConventionsError)
    message = assert_one_line(error)
    assert message.startswith(f"{path}")
    assert words in message


def test_a_path_with_a_nul_is_refused_in_one_line():
    error = refused(conventions=["bad\x00name.yaml"])
    assert "cannot read the conventions file" in assert_one_line(error)


# --- the generated module is typed -----------------------------------------------------------------------

GOOD_USE = """\
from mypkg.metrics import RateLimiterMetrics

metrics = RateLimiterMetrics()
metrics.count_decision("checkout", "checkout-writes", "allowed", client="tenant-42")
metrics.count_decision(service="checkout", limiter="search", outcome="rejected", amount=2)
metrics.set_tokens_remaining("checkout", "search", 3.5)
metrics.record_wait("checkout", "search", "delayed", 0.02)
metrics.add_waiting("checkout", "search", -1)
"""
BAD_USE = """\
from mypkg.metrics import RateLimiterMetrics

RateLimiterMetrics().count_decision(service=1, limiter="search", outcome="allowed")
"""


def mypy(cwd: Path, *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-version", "3.10", *files],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def generated(tmp_path) -> Path:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    module = package / "metrics.py"
    assert main(["generate", str(copy_of_example(tmp_path)), "--output", str(module)]) == 0
    return module


def test_the_generated_module_passes_mypy_strict_and_types_its_arguments(tmp_path, generated):
    (tmp_path / "good_use.py").write_text(GOOD_USE, encoding="utf-8")
    (tmp_path / "bad_use.py").write_text(BAD_USE, encoding="utf-8")

    clean = mypy(tmp_path, "mypkg/metrics.py", "good_use.py")
    assert clean.returncode == 0, clean.stdout + clean.stderr

    wrong = mypy(tmp_path, "bad_use.py")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    errors = [line for line in wrong.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, wrong.stdout
    assert errors[0].startswith("bad_use.py:3:")
    assert 'Argument "service"' in errors[0]
    assert "[arg-type]" in errors[0]


def test_the_generated_methods_take_one_keyword_per_attribute_and_are_documented(tmp_path, generated):
    module = import_path(generated, "plugin_loader_generated_metrics")
    registry = load(tmp_path / "ratelimit.yaml", builtin=semconv.CONVENTIONS)
    facade = module.RateLimiterMetrics
    assert facade.__doc__
    expected = {
        "count_decision": ["service", "limiter", "outcome", "client"],
        "set_tokens_remaining": ["service", "limiter"],
        "record_wait": ["service", "limiter", "outcome"],
        "add_waiting": ["service", "limiter"],
    }
    assert {metric["method"] for metric in registry.metrics} == set(expected)
    for metric in registry.metrics:
        method = getattr(facade, metric["method"])
        parameters = inspect.signature(method).parameters
        hints = typing.get_type_hints(method)
        names = [use["key"].rsplit(".", 1)[-1] for use in metric["attributes"]]
        assert names == expected[metric["method"]]
        for use, name in zip(metric["attributes"], names, strict=True):
            assert name in parameters, f"{metric['method']} has no {name!r}"
            parameter = parameters[name]
            if use["requirement_level"] == "required":
                assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
                assert parameter.default is inspect.Parameter.empty
                assert hints[name] is str
            else:
                assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
                assert parameter.default is None
                assert hints[name] == str | None
        doc = inspect.getdoc(method)
        assert doc
        assert metric["name"] in doc
        assert metric["brief"] in doc
        for name in names:
            assert f"{name}:" in doc
