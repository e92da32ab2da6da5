"""An empty or unreadable secret is a configuration error, never an open endpoint, and never echoed."""

from __future__ import annotations

import pytest

import meshmetrics
from meshmetrics._setup.settings import ConfigurationError, resolve

PFX = "MESHMETRICS_PROMETHEUS_"
SECRET = "SECRET-do-not-echo"


def _configure(**kwargs: object) -> meshmetrics.MetricsHandle:
    kwargs.setdefault("environ", {})
    return meshmetrics.configure(prometheus_host="127.0.0.1", prometheus_port=0, set_global=False, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["", " ", "\t\n"])
def test_empty_bearer_token_argument(token):
    with pytest.raises(
        ConfigurationError, match="prometheus_bearer_token: argument prometheus_bearer_token="
    ) as raised:
        _configure(prometheus_bearer_token=token)
    assert "empty or blank" in str(raised.value)
    assert meshmetrics.current_handle() is None  # nothing was started


@pytest.mark.parametrize("value", ["", " ", "\n"])
def test_empty_bearer_token_variable_that_is_set(value):
    # an empty variable is usually "unset"; for a secret it is a mistake that would open /metrics
    with pytest.raises(ConfigurationError, match=f"variable {PFX}BEARER_TOKEN: is empty or blank"):
        _configure(environ={f"{PFX}BEARER_TOKEN": value})


@pytest.mark.parametrize("content", ["", "\n", "  \r\n"])
@pytest.mark.parametrize("source", ["argument", "variable"])
def test_token_file_holding_nothing(tmp_path, content, source):
    path = tmp_path / "token"
    path.write_text(content)
    if source == "argument":
        kwargs: dict[str, object] = {"prometheus_bearer_token_file": str(path)}
        where = "argument prometheus_bearer_token_file="
    else:
        kwargs = {"environ": {f"{PFX}BEARER_TOKEN_FILE": str(path)}}
        where = f"variable {PFX}BEARER_TOKEN_FILE"
    with pytest.raises(ConfigurationError, match=f"prometheus_bearer_token_file: {where}.*empty or blank"):
        _configure(**kwargs)


def test_missing_token_file_is_a_configuration_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigurationError, match=r"prometheus_bearer_token_file.*readable file") as raised:
        _configure(prometheus_bearer_token_file=str(missing))
    assert str(missing) in str(raised.value)
    assert not isinstance(raised.value, FileNotFoundError)


@pytest.mark.parametrize(
    ("pair", "part"),
    [
        (("", SECRET), "username"),
        ((" ", SECRET), "username"),
        (("prom", ""), "password"),
        (("prom", "  "), "password"),
    ],
)
def test_empty_basic_auth_argument(pair, part):
    with pytest.raises(
        ConfigurationError, match=rf"argument prometheus_basic_auth= \({part}\): is empty"
    ) as raised:
        _configure(prometheus_basic_auth=pair)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {f"{PFX}BASIC_AUTH_USERNAME": "", f"{PFX}BASIC_AUTH_PASSWORD": SECRET},
            "BASIC_AUTH_USERNAME: is empty",
        ),
        (
            {f"{PFX}BASIC_AUTH_USERNAME": "prom", f"{PFX}BASIC_AUTH_PASSWORD": " "},
            "BASIC_AUTH_PASSWORD: is empty",
        ),
        ({f"{PFX}BASIC_AUTH_USERNAME": "prom"}, "needs exactly one of"),
        ({f"{PFX}BASIC_AUTH_PASSWORD": SECRET}, f"needs {PFX}BASIC_AUTH_USERNAME too"),
        ({f"{PFX}BASIC_AUTH_USERNAME": "a:b", f"{PFX}BASIC_AUTH_PASSWORD": SECRET}, "must not contain ':'"),
    ],
)
def test_incomplete_basic_auth_variables(environ, message):
    with pytest.raises(ConfigurationError, match=message) as raised:
        _configure(environ=environ)
    assert str(raised.value).startswith("prometheus_basic_auth: variable")
    assert SECRET not in str(raised.value)


def test_password_file_holding_only_a_newline(tmp_path):
    path = tmp_path / "password"
    path.write_text("\n")
    environ = {f"{PFX}BASIC_AUTH_USERNAME": "prom", f"{PFX}BASIC_AUTH_PASSWORD_FILE": str(path)}
    with pytest.raises(ConfigurationError, match=f"variable {PFX}BASIC_AUTH_PASSWORD_FILE.*empty or blank"):
        _configure(environ=environ)


def test_token_and_token_file_together_are_ambiguous(tmp_path):
    path = tmp_path / "token"
    path.write_text("from-file")
    with pytest.raises(ConfigurationError, match="not both"):
        _configure(prometheus_bearer_token="t", environ={f"{PFX}BEARER_TOKEN_FILE": str(path)})


def test_secrets_from_files_and_variables_are_read(tmp_path):
    path = tmp_path / "password"
    path.write_text("pa ss\n")
    settings = resolve(
        environ={
            f"{PFX}BEARER_TOKEN": " tok ",
            f"{PFX}BASIC_AUTH_USERNAME": "prom",
            f"{PFX}BASIC_AUTH_PASSWORD_FILE": str(path),
        }
    )
    assert settings.prometheus_bearer_token == "tok"
    assert settings.prometheus_basic_auth == ("prom", "pa ss")
    assert "tok" not in repr(settings)
    assert "pa ss" not in repr(settings)


@pytest.mark.parametrize("variable", ["CERTFILE", "KEYFILE", "CLIENT_CAFILE", "BEARER_TOKEN_FILE"])
def test_security_file_variables_set_empty_are_errors(variable):
    with pytest.raises(ConfigurationError, match=f"variable {PFX}{variable}"):
        resolve(environ={f"{PFX}{variable}": ""})


def test_missing_tls_files_are_configuration_errors(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("not used")
    with pytest.raises(
        ConfigurationError, match=r"prometheus_keyfile: argument prometheus_keyfile=.*existing"
    ):
        resolve(environ={}, prometheus_certfile=str(cert), prometheus_keyfile=str(tmp_path / "missing.pem"))
