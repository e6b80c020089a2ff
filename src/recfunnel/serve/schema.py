"""The service's request and response bodies, and validation errors said in one line per field.

    POST /recommend  {"user_id": 196, "k": 10, "exclude": [50], "features": {"age": 31}}
        user_id   required: an integer or a string id, or null (anonymous: features or popular items)
        k         1..max_k, default 10
        exclude   item ids to leave out, at most MAX_EXCLUDE
        features  a new user's raw features: name -> scalar, or a list of them (multi-hot)

Ids are JSON integers or strings, as the raw ids were in the training data; booleans and floats
are refused rather than coerced (``"196"`` and ``196`` are different ids).
"""

# No ``from __future__ import annotations``: pydantic resolves the annotations of the request
# model that ``recommend_request`` defines inside a function.

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

__all__ = [
    "recommend_request",
    "RecommendResponse",
    "SimilarResponse",
    "ScoredItem",
    "Health",
    "ReloadResponse",
    "validation_message",
    "json_type",
    "DEFAULT_K",
    "MAX_EXCLUDE",
]

MAX_EXCLUDE = 10_000
DEFAULT_K = 10  # or max_k, if smaller
MAX_ERRORS = 3  # fields named in one message
_SCALARS = (str, int, float, bool, type(None))


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type: null, boolean, number, string, array, object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _got(value: Any) -> str:
    """``5000``, ``'abc'``, ``true``, ``null`` or ``an object``: a short bad value, else its type."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool) and len(repr(value)) <= 40:
        return repr(value)
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    kind = json_type(value)
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _id(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected an integer or a string id, got {_got(value)}")
    return value


def _user_id(value: Any) -> int | str | None:
    return None if value is None else _id(value)


def _feature(value: Any) -> Any:
    if isinstance(value, _SCALARS) or (isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value)):
        return value
    raise ValueError(f"expected a string, number, boolean, null or a list of them, got {_got(value)}")


Id = Annotated[int | str, PlainValidator(_id, json_schema_input_type=int | str)]
UserId = Annotated[int | str | None, PlainValidator(_user_id, json_schema_input_type=int | str | None)]
FeatureValue = Annotated[Any, PlainValidator(_feature), WithJsonSchema({})]


def recommend_request(max_k: int) -> type[BaseModel]:
    """The ``POST /recommend`` body with ``k`` limited to ``1..max_k``."""

    def check_k(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_got(value)}")
        if not 1 <= value <= max_k:
            raise ValueError(f"must be between 1 and {max_k}, got {value}")
        return value

    K = Annotated[int, PlainValidator(check_k), WithJsonSchema({"type": "integer", "minimum": 1, "maximum": max_k})]

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        user_id: UserId = Field(description="a raw user id; null for an anonymous user")
        k: K = Field(min(DEFAULT_K, max_k), description=f"items to return, 1..{max_k}")
        exclude: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDE, description="raw item ids to leave out")
        features: dict[str, FeatureValue] | None = Field(None, description="a new user's raw features")

    return RecommendRequest


class ScoredItem(BaseModel):
    item_id: int | str
    score: float
    rank: int  # 1 = best


class RecommendResponse(BaseModel):
    user_id: int | str | None
    items: list[ScoredItem]
    source: str  # user | features | popular
    timings_ms: dict[str, float]  # per funnel stage (the batch's time), queue (waiting for a batch), total
    batch: int  # requests that went through the models together with this one
    version: str  # the models that answered
    warnings: list[str]


class SimilarResponse(BaseModel):
    item_id: int | str
    items: list[ScoredItem]


class Health(BaseModel):
    status: str  # ok | draining (stopping: finishing what is in flight)
    items: int  # in the index
    ranker: bool
    index: str  # exact | ivf | hnsw
    version: str  # the models served (and their versions or digests)
    loaded_at: str  # when they were loaded (UTC, ISO 8601)
    reloads: int  # new versions swapped in since the start
    refused_versions: int  # new versions that failed to load or answer, not swapped in
    last_reload_error: str | None  # why the last refused version was refused
    pid: int  # the worker process that answered (its HTTP loop)
    memory_mib: dict[str, float] | None  # its rss, pss (shared pages split among sharers), private
    funnel_pid: int | None = None  # the worker's funnel process (None: the funnel runs in the loop's)
    funnel_memory_mib: dict[str, float] | None = None


class ReloadResponse(BaseModel):
    reloaded: bool  # a new version was swapped in
    version: str  # the models served now
    error: str | None  # why a new version was refused (the old one still serves)
    workers: int  # worker processes told to reload


def validation_message(errors: list[dict[str, Any]]) -> str:
    """``k: must be between 1 and 1000, got 5000; exclude: at most 10,000 ids, got 10,001``."""
    messages = list(dict.fromkeys(_message(e) for e in errors))
    more = f" (and {len(messages) - MAX_ERRORS} more)" if len(messages) > MAX_ERRORS else ""
    return "; ".join(messages[:MAX_ERRORS]) + more


def _message(error: dict[str, Any]) -> str:
    loc = list(error.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    field = ".".join(str(part) for part in loc) or "body"
    kind, ctx, value = error.get("type", ""), error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        hint = " (null for an anonymous user)" if field == "user_id" else ""
        return f"{field}: required{hint}" if loc else "body: required: a JSON object"
    if kind == "extra_forbidden":
        return f"{field}: unknown field"
    if kind == "too_long":
        return f"{field}: at most {ctx.get('max_length', 0):,} ids, got {ctx.get('actual_length', 0):,}"
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        return f"{field}: expected a JSON object, got {_got(value)}"
    if kind == "list_type":
        return f"{field}: expected a list, got {_got(value)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{field}: expected an integer, got {_got(value)}"
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    return f"{field}: {message[:1].lower()}{message[1:]}"
