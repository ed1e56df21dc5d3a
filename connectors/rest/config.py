"""The REST source's config: pydantic models, validated once, errors naming the bad key.

:class:`RestConfig` is the source's ``config_model``: :class:`~connectors.base.BaseSource`
validates the plain mapping from ``stack.yml`` (secrets already resolved) into it, or reports
a ConnectorError whose ``key`` is the path of the offending entry
(``streams.spend.cursor_param``). Secret fields are ``SecretStr``, so a config object never
shows them in a repr, and no error message quotes a config value.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from connectors.config import SourceConfig
from connectors.rest.jsonpath import JsonPath, JsonPathError

ColumnType = Literal["string", "integer", "number", "boolean", "date", "timestamp", "json"]
"""Types a stream's ``schema:`` may declare (JSON Schema's words, plus date/timestamp/json)."""

_PARENT_FIELD = re.compile(r"\{parent\.([A-Za-z_][\w.-]*)\}")
_ISO_DURATION = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def _names(value: Any) -> Any:
    """``primary_key: id`` is ``[id]``."""
    return [value] if isinstance(value, str) else value


def _path(value: Any) -> Any:
    """A JSONPath string, compiled (so that a bad path fails at config time)."""
    if isinstance(value, str):
        try:
            return JsonPath(value)
        except JsonPathError as exc:
            raise ValueError(str(exc)) from None
    return value


Path = Annotated[
    JsonPath,
    BeforeValidator(_path),
    PlainSerializer(lambda path: path.text, return_type=str),
    WithJsonSchema({"type": "string", "description": "JSONPath: $, $.a.b, $.a[*], $.a[0]"}),
]
Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
Scalar = str | int | float | bool


class _Model(SourceConfig):
    model_config = ConfigDict(arbitrary_types_allowed=True)


class BearerAuth(_Model):
    """``Authorization: Bearer <token>``."""

    type: Literal["bearer"]
    token: SecretStr


class ApiKeyAuth(_Model):
    """An API key in a header (``X-Api-Key: <value>``) or a query parameter."""

    type: Literal["api_key"]
    name: str = Field(min_length=1)
    value: SecretStr
    in_: Literal["header", "query"] = Field("header", alias="in")


class BasicAuth(_Model):
    """HTTP Basic authentication."""

    type: Literal["basic"]
    username: str
    password: SecretStr = SecretStr("")


class OAuth2ClientCredentials(_Model):
    """OAuth2 client credentials grant: a token from ``token_url``, cached until near expiry."""

    type: Literal["oauth2_client_credentials"]
    token_url: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scopes: tuple[str, ...] = ()
    client_auth: Literal["basic", "body"] = "basic"
    """How the client authenticates to the token endpoint: HTTP Basic, or id/secret in the form."""


Auth = Annotated[
    BearerAuth | ApiKeyAuth | BasicAuth | OAuth2ClientCredentials, Field(discriminator="type")
]


class NoPagination(_Model):
    """One request per endpoint."""

    type: Literal["none"]


class PageNumberPagination(_Model):
    """``?page=1&per_page=100``, ``?page=2...``: pages fetched concurrently."""

    type: Literal["page_number"]
    param: str = "page"
    start: int = 1
    size_param: str | None = None
    size: int | None = Field(None, ge=1)
    total_pages_path: Path | None = None
    """JSONPath of the number of pages in the first page's body, if the API says it."""
    total_path: Path | None = None
    """Or of the number of records (with ``size``), if the API says that."""


class OffsetPagination(_Model):
    """``?offset=0&limit=100``, ``?offset=100...``: pages fetched concurrently."""

    type: Literal["offset"]
    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = Field(100, ge=1)
    total_path: Path | None = None
    """JSONPath of the number of records in the first page's body, if the API says it."""


class CursorPagination(_Model):
    """The next page's token is in the body (``cursor_path``) and goes back as ``param``."""

    type: Literal["cursor"]
    cursor_path: Path
    param: str = "cursor"


class LinkHeaderPagination(_Model):
    """The next page's URL is in the ``Link`` header (RFC 8288), ``rel="next"``."""

    type: Literal["link_header"]
    rel: str = "next"


class NextUrlPagination(_Model):
    """The next page's URL (absolute or relative) is in the body at ``path``."""

    type: Literal["next_url"]
    path: Path


Pagination = Annotated[
    NoPagination
    | PageNumberPagination
    | OffsetPagination
    | CursorPagination
    | LinkHeaderPagination
    | NextUrlPagination,
    Field(discriminator="type"),
]


class RateLimit(_Model):
    """How hard the source may be hit, across all streams read through one source object."""

    max_concurrency: int = Field(4, ge=1, le=64)
    requests_per_second: float | None = Field(None, gt=0)


class Retries(_Model):
    """Retries of 429, 5xx, timeouts and dropped connections, by :mod:`connectors.http`:
    exponential backoff with full jitter."""

    max: int = Field(5, ge=0)
    backoff: float = Field(0.5, ge=0)
    """The first retry waits up to this many seconds (a random share of it); each later one
    up to twice as long as the one before."""
    max_wait: float = Field(60.0, gt=0)
    """Longest single wait; a ``Retry-After`` beyond it fails the read (retryable)."""


class StreamDef(_Model):
    """One endpoint of the API as a stream."""

    path: str = Field(min_length=1)
    records: Path = Field("$", validate_default=True)
    primary_key: Names = ()
    cursor: str | None = None
    cursor_param: str | None = None
    lookback: float | str | None = None
    params: dict[str, Scalar] = Field(default_factory=dict)
    pagination: Pagination | None = None
    parent: str | None = None
    parent_fields: dict[str, str] | None = None
    """Child column -> parent field, added to every child record; default ``_<parent>_<key>``."""
    schema_: dict[str, ColumnType] | None = Field(None, alias="schema")

    @field_validator("lookback")
    @classmethod
    def _lookback(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, str) and iso_duration(value) is None:
            raise ValueError('use seconds (3600) or an ISO 8601 duration ("P1D", "PT15M")')
        if isinstance(value, int | float) and value < 0:
            raise ValueError("lookback must not be negative")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StreamDef:
        if self.cursor_param and not self.cursor:
            raise ValueError("cursor_param needs a `cursor:` (the field it is compared with)")
        if self.lookback is not None and not self.cursor:
            raise ValueError("lookback needs a `cursor:`")
        uses_parent = bool(_PARENT_FIELD.search(self.path)) or self.parent_fields
        if uses_parent and not self.parent:
            raise ValueError("{parent.x} in `path` or `parent_fields` need a `parent:` stream")
        return self

    @property
    def path_fields(self) -> tuple[str, ...]:
        """Parent fields the path refers to (``{parent.id}`` -> ``id``)."""
        return tuple(dict.fromkeys(_PARENT_FIELD.findall(self.path)))


class RestConfig(_Model):
    """The whole ``config:`` mapping of a ``connector: rest`` source."""

    model_config = ConfigDict(title="REST")

    base_url: str = Field(min_length=1)
    auth: Auth | None = None
    pagination: Pagination = NoPagination(type="none")
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Scalar] = Field(default_factory=dict)
    rate_limit: RateLimit = Field(default_factory=lambda: RateLimit.model_validate({}))
    timeout: float = Field(30.0, gt=0)
    retries: Retries = Field(default_factory=lambda: Retries.model_validate({}))
    batch_size: int = Field(25_000, ge=1)
    streams: dict[str, StreamDef] = Field(min_length=1)

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _parents(self) -> RestConfig:
        for name, stream in self.streams.items():
            seen = [name]
            while stream.parent is not None:
                if stream.parent not in self.streams:
                    raise ValueError(f"stream {name!r}: parent {stream.parent!r} is not a stream")
                if stream.parent in seen:
                    raise ValueError(f"stream {name!r}: parents form a cycle {seen}")
                seen.append(stream.parent)
                stream = self.streams[stream.parent]
        return self

    def pagination_of(self, stream: StreamDef) -> Any:
        return stream.pagination or self.pagination

    def secrets(self) -> tuple[str, ...]:
        """Every secret value of the config, to scrub from messages."""
        auth = self.auth
        values: list[SecretStr] = []
        if isinstance(auth, BearerAuth):
            values = [auth.token]
        elif isinstance(auth, ApiKeyAuth):
            values = [auth.value]
        elif isinstance(auth, BasicAuth):
            values = [auth.password]
        elif isinstance(auth, OAuth2ClientCredentials):
            values = [auth.client_secret]
        return tuple(v.get_secret_value() for v in values if len(v.get_secret_value()) >= 4)


def iso_duration(text: str) -> timedelta | None:
    """``P1D``, ``PT15M``, ``P1W``... as a timedelta; None if not such a duration."""
    match = _ISO_DURATION.match(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        return None
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return timedelta(
        weeks=parts.get("w", 0),
        days=parts.get("d", 0),
        hours=parts.get("h", 0),
        minutes=parts.get("m", 0),
        seconds=parts.get("s", 0),
    )
