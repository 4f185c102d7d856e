"""Settings shared by the apps, and the server's validated settings.

Two folders come from the environment only (they are read by library code and the CLI, not just
the server): `cache_dir()` ($MOE_SUITE_CACHE) and `shared_datasets_dir()` ($MOE_SUITE_DATASETS).

The server's settings live in one object, `Settings`, filled from (later wins):

1. the defaults below;
2. a TOML file: `--config PATH` or $MOE_SUITE_CONFIG (flat keys named like the fields, see
   moe-suite.example.toml at the repository root);
3. environment variables MOE_SUITE_<FIELD>, e.g. MOE_SUITE_PORT=8000, MOE_SUITE_PRELOAD=chat,lab;
4. explicit overrides (the CLI's --host/--port).

    settings = Settings.load()                       # file + environment
    settings = Settings.load("suite.toml", port=8000)

Exposure rule: binding to anything but a loopback address needs both an API token and a page
login (`api_token`, `auth_user` + `auth_password`); otherwise loading fails with a
SettingsError, unless `allow_public_without_auth = true` says that something in front (an
authenticating proxy) protects the suite, in which case the server logs a warning at start.
"""
from __future__ import annotations

import ipaddress
import json
import os
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

ENV_PREFIX = "MOE_SUITE_"
CONFIG_ENV = "MOE_SUITE_CONFIG"


def cache_dir() -> Path:
    """Where the apps keep what they build on first use (default models, indexes, chat sessions):
    $MOE_SUITE_CACHE, default ~/.cache/moe-suite."""
    return Path(os.environ.get("MOE_SUITE_CACHE", "~/.cache/moe-suite")).expanduser()


def shared_datasets_dir() -> Path:
    """The third-party datasets beside the project (read-only, never copied into it):
    $MOE_SUITE_DATASETS, default <project>/../shared/datasets."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    return Path(os.environ.get("MOE_SUITE_DATASETS", default)).expanduser()


class SettingsError(ValueError):
    """Settings that cannot be used; the message names the file or variable and the field."""


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


# what a chat folder setting must hold: (file, key, value it names, what the folder is); light checks only
# (the app modules that own these formats import torch)
_CHAT_FOLDERS = {"chat_intent_model": ("config.json", "kind", "text_classifier", "an intent model (train-intents)"),
                 "chat_index": ("manifest.json", "task", "retrieval", "a knowledge index (chat index)")}


class Settings(BaseModel):
    """The server's settings; see the module docstring for where they come from."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    # ---- where to listen ----
    host: str = "127.0.0.1"                 # loopback only unless told otherwise
    port: int = Field(7860, ge=1, le=65535)
    # ---- who may use it ----
    api_token: SecretStr | None = None      # bearer token required on /api/v1/* when set
    auth_user: str | None = None            # page login (Gradio auth) when both are set
    auth_password: SecretStr | None = None
    allow_public_without_auth: bool = False  # non-loopback host without token/login: refuse unless true
    # ---- limits ----
    max_body_bytes: int = Field(1 << 20, ge=1024)         # any non-multipart request body (413 past it)
    max_upload_bytes: int = Field(200 << 20, ge=1024)     # multipart bodies (file uploads, pages and API)
    rate_limit_per_minute: int = Field(600, ge=0)         # per client IP, requests that do work; 0 = off
    rate_limit_burst: int = Field(60, ge=1)               # requests a client may send at once
    rate_limit_loopback: bool = False                     # also limit 127.0.0.1/::1 clients (local tools)
    # ---- files and logs ----
    upload_dir: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()) / "moe-suite-uploads")
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # ---- models ----
    preload: tuple[str, ...] = ()           # app names whose models load at start ("all" = every app);
                                            # the others load on first use
    # ---- customer-service chat (read once at start: restart the server after changing them) ----
    chat_intent_model: Path | None = None   # a `moe-suite chat train-intents` folder (default: the bank's)
    chat_index: Path | None = None          # index folder from `moe-suite chat index` (default: the bank's KB)
    chat_dialogue: Path | None = None       # dialogue YAML (default: the bank's with the bank's model,
                                            # otherwise one built from the intent model's labels)
    chat_session_idle_hours: float = Field(24.0, gt=0, le=24 * 365)  # idle chat sessions are deleted after this

    @field_validator("chat_intent_model", "chat_index", "chat_dialogue", mode="after")
    @classmethod
    def _chat_path(cls, value: Path | None, info: Any) -> Path | None:
        """A light check that the path holds what the field needs (the models load on first use)."""
        if value is None:
            return None
        value = value.expanduser().resolve()
        if info.field_name == "chat_dialogue":  # its content is checked by the chat app when the server configures it
            if not value.is_file():
                raise ValueError(f"{value}: no such dialogue file")
            return value
        need, key, expected, what = _CHAT_FOLDERS[info.field_name]
        if not (value / need).is_file():
            raise ValueError(f"{value}: not {what}: no {need} in it")
        try:
            doc = json.loads((value / need).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{value / need}: unreadable ({exc})") from None
        if not isinstance(doc, dict) or doc.get(key) != expected:
            raise ValueError(f"{value}: not {what}: {need} has no {key} = {expected!r}")
        return value

    @field_validator("preload", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):  # "chat, lab" from the environment
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("upload_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("auth_user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if (self.auth_user is None) != (self.auth_password is None):
            raise ValueError("auth_user and auth_password go together: set both or neither")
        if self.api_token is not None and len(self.api_token.get_secret_value()) < 16:
            raise ValueError("api_token must be at least 16 characters")
        if not is_loopback(self.host) and not self.allow_public_without_auth and not (
                self.api_token and self.auth_user):
            raise ValueError(
                f"host {self.host!r} is not a loopback address: set api_token and auth_user/auth_password, "
                "or set allow_public_without_auth = true if a proxy in front authenticates every request")
        return self

    @property
    def gradio_auth(self) -> tuple[str, str] | None:
        """(user, password) for gr.mount_gradio_app(auth=...), or None."""
        if self.auth_user is None or self.auth_password is None:
            return None
        return self.auth_user, self.auth_password.get_secret_value()

    @property
    def exposed_without_auth(self) -> bool:
        """Bound beyond loopback with the token or the login missing (allowed explicitly)."""
        return not is_loopback(self.host) and not (self.api_token and self.auth_user)

    @classmethod
    def load(cls, config: str | Path | None = None, environ: Mapping[str, str] | None = None,
             **overrides: Any) -> Settings:
        """Defaults < TOML `config` (default $MOE_SUITE_CONFIG) < MOE_SUITE_* variables < `overrides`
        (None values are ignored). Raises SettingsError naming the source of a bad value."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        source: dict[str, str] = {}  # field -> where its value came from, for error messages
        config = config if config is not None else environ.get(CONFIG_ENV) or None
        if config is not None:
            path = Path(config).expanduser()
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise SettingsError(f"settings file {path}: {exc.strerror or exc}") from None
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise SettingsError(f"settings file {path}: not valid TOML ({exc})") from None
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise SettingsError(f"settings file {path}: unknown setting(s) {', '.join(unknown)}; "
                                    f"known: {', '.join(cls.model_fields)}")
            values |= data
            source |= dict.fromkeys(data, f"settings file {path}")
        for name in cls.model_fields:
            if (text := environ.get(ENV_PREFIX + name.upper())) is not None:
                values[name] = text
                source[name] = f"environment variable {ENV_PREFIX}{name.upper()}"
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
                source[name] = f"option {name}"
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else ""
                where = source.get(field, "settings") if field else "settings"
                problems.append(f"{where}: {field or 'settings'}: {error['msg']}")
            raise SettingsError("; ".join(problems)) from None

    def public_dict(self) -> dict[str, Any]:
        """The settings with secrets shown as set/unset, for logs and /readyz."""
        out = self.model_dump(mode="json")
        for name in ("api_token", "auth_password"):
            out[name] = "set" if out[name] else None
        return out
