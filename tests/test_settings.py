"""Settings: defaults, the TOML file, MOE_SUITE_* variables and overrides in that order; bad values
named by their source; the exposure rule; the documented example file is valid."""
from pathlib import Path

import pytest

from apps.settings import Settings, SettingsError, is_loopback

EXAMPLE = Path(__file__).resolve().parents[1] / "moe-suite.example.toml"
TOKEN = "t" * 24


def test_defaults_are_safe():
    s = Settings.load(environ={})
    assert s.host == "127.0.0.1" and s.port == 7860 and s.api_token is None and s.gradio_auth is None
    assert s.rate_limit_per_minute > 0 and s.max_body_bytes < s.max_upload_bytes and s.preload == ()
    assert s.upload_dir.is_absolute() and not s.exposed_without_auth


def test_file_then_environment_then_overrides(tmp_path):
    config = tmp_path / "suite.toml"
    config.write_text('port = 8001\nlog_format = "text"\npreload = ["chat"]\nmax_body_bytes = 4096\n')
    s = Settings.load(config, environ={})
    assert (s.port, s.log_format, s.preload, s.max_body_bytes) == (8001, "text", ("chat",), 4096)
    env = {"MOE_SUITE_PORT": "8002", "MOE_SUITE_PRELOAD": "chat, lab", "MOE_SUITE_CONFIG": str(config),
           "MOE_SUITE_CACHE": "/elsewhere"}  # not a server setting: ignored here
    s = Settings.load(environ=env)
    assert s.port == 8002 and s.preload == ("chat", "lab") and s.log_format == "text"
    assert Settings.load(environ=env, port=8003, host=None).port == 8003


@pytest.mark.parametrize("text, env, message", [
    ("port = 0\n", {}, "settings file"),
    ("colour = 'red'\n", {}, "unknown setting(s) colour"),
    ("port = \n", {}, "not valid TOML"),
    ("", {"MOE_SUITE_PORT": "eighty"}, "environment variable MOE_SUITE_PORT: port"),
    ("", {"MOE_SUITE_LOG_FORMAT": "xml"}, "MOE_SUITE_LOG_FORMAT"),
    ("", {"MOE_SUITE_AUTH_USER": "ann"}, "auth_user and auth_password go together"),
    ("", {"MOE_SUITE_API_TOKEN": "short"}, "at least 16 characters"),
    ("", {"MOE_SUITE_MAX_BODY_BYTES": "-1"}, "max_body_bytes"),
])
def test_bad_values_name_their_source(tmp_path, text, env, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.load(config, environ=env)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match="nope.toml"):
        Settings.load(tmp_path / "nope.toml", environ={})


def test_public_host_needs_token_and_login():
    with pytest.raises(SettingsError, match="not a loopback address"):
        Settings.load(environ={"MOE_SUITE_HOST": "0.0.0.0"})
    with pytest.raises(SettingsError, match="not a loopback address"):  # a token alone is not enough
        Settings.load(environ={"MOE_SUITE_HOST": "0.0.0.0", "MOE_SUITE_API_TOKEN": TOKEN})
    s = Settings.load(environ={"MOE_SUITE_HOST": "0.0.0.0", "MOE_SUITE_API_TOKEN": TOKEN,
                               "MOE_SUITE_AUTH_USER": "ann", "MOE_SUITE_AUTH_PASSWORD": "pw"})
    assert s.gradio_auth == ("ann", "pw") and not s.exposed_without_auth
    s = Settings.load(environ={"MOE_SUITE_HOST": "10.0.0.5", "MOE_SUITE_ALLOW_PUBLIC_WITHOUT_AUTH": "true"})
    assert s.exposed_without_auth


def test_secrets_stay_out_of_reports():
    s = Settings(api_token=TOKEN, auth_user="ann", auth_password="pw")
    public = s.public_dict()
    assert public["api_token"] == "set" and public["auth_password"] == "set" and TOKEN not in repr(s)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.5.0.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.4", False), ("example.org", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_documented_example_loads_and_lists_every_setting():
    s = Settings.load(EXAMPLE, environ={})
    assert s == Settings.load(environ={}).model_copy(update={"upload_dir": s.upload_dir})
    text = EXAMPLE.read_text()
    assert all(f"{name} =" in text for name in Settings.model_fields)  # each documented (commented or set)
