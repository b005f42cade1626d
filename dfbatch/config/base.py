"""The one mechanism behind every job's config: typed, frozen, validated in one place, and built alike from
code, command-line flags (`dfbatch.cli.options`) and YAML.

A job config is a class decorated with `@job_config` (a frozen pydantic dataclass, unknown fields refused).
Each field's annotation carries its type, its limits and, when the command line sets it, its flag:

    @job_config
    class EvaluateConfig(JobConfig):
        output: Annotated[PathStr, arg("OUT", help="a `dfbatch score` output (local or s3://)")]
        labels: Annotated[Paths, opt("--labels", help="dataset root(s) or labels CSV", min_length=1)]
        top: Annotated[int, opt("--top", help="rows shown (default {default})", ge=1)] = 20

A nested config (`FaceConfig` inside `ScoreConfig`) is a *section*: the job names which of its fields are flags
(and may reword their help); a mapping given for a section (YAML, flags) is merged onto the section's default.

Every mistake, whether it comes from code, a flag or a YAML key, raises `ConfigError` (a `UserError`) whose text is
one line naming the flag, or the key for fields without one: "--frames must be at least 1". pydantic's own
ValidationError never escapes.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import pydantic
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from dfbatch.errors import ConfigError, redact

C = TypeVar("C", bound="JobConfig")
_CLI = "cli"  # the key of a field's command-line metadata in json_schema_extra


# ------------------------------------------------------------------------------------------- declaring fields
def opt(flag: str | None = None, *, short: str | None = None, help: str | None = None, metavar: str | None = None,
        negative: str | None = None, negative_help: str | None = None, error: str | None = None,
        **constraints: Any) -> Any:
    """A field's metadata: its flag (None: set from code and YAML only), help ("{default}" is replaced by the
    default), limits (pydantic's ge, gt, le, lt, min_length, ...), and `error`, a message that replaces the
    generated one. A bool field's flag stores the opposite of its default (`--rescore`, `--no-augment`); a
    `bool | None` field may have a `negative` flag too (`--gpu` / `--cpu`)."""
    cli = {"flag": flag, "short": short, "metavar": metavar, "negative": negative, "negative_help": negative_help,
           "error": error}
    return Field(description=help, json_schema_extra={_CLI: {k: v for k, v in cli.items() if v is not None}},
                 **constraints)


def arg(metavar: str, *, help: str | None = None, error: str | None = None, **constraints: Any) -> Any:
    """A positional command-line argument (a list field takes any number: `SOURCE...`)."""
    cli = {"positional": True, "metavar": metavar, "error": error}
    return Field(description=help, json_schema_extra={_CLI: {k: v for k, v in cli.items() if v is not None}},
                 **constraints)


def section(*flags: str, **reworded: str) -> Any:
    """A nested config field; `flags` (and the keys of `reworded`, with their help text for this job) are the
    nested fields the job's command line sets."""
    return Field(json_schema_extra={_CLI: {"section": {**{f: None for f in flags}, **reworded}}})


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _as_list(value: Any) -> Any:
    value = _fspath(value)
    return [value] if isinstance(value, str) else value


def _parse_size(value: Any) -> Any:
    if isinstance(value, str):
        try:
            w, h = (int(v) for v in value.lower().split("x"))
        except ValueError:
            raise ValueError(f"expected WIDTHxHEIGHT, e.g. 1280x720, got {value!r}") from None
        return w, h
    return value


def _parse_numbers(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return tuple(float(p) for p in value.split(","))
        except ValueError:
            raise ValueError(f"expected comma-separated numbers, got {value!r}") from None
    return value


def absolute_local(value: str) -> str:
    """A local path made absolute (`~` expanded); a URI as it is."""
    if not value or "://" in value:
        return value
    path = os.path.abspath(os.path.expanduser(value))
    return path + os.sep if value.endswith(os.sep) and not path.endswith(os.sep) else path


class _LocalPath:
    """Marks the path fields (`PathStr`, `Paths`) that `JobConfig.with_absolute_paths` resolves."""


_LOCAL_PATH = _LocalPath()


def _is_path_field(info: FieldInfo) -> bool:
    def marked(annotation: Any) -> bool:
        if get_origin(annotation) is Annotated:
            return any(m is _LOCAL_PATH for m in get_args(annotation)[1:]) or marked(get_args(annotation)[0])
        return any(marked(a) for a in get_args(annotation))

    return any(m is _LOCAL_PATH for m in info.metadata) or marked(info.annotation)


PathStr = Annotated[str, BeforeValidator(_fspath), _LOCAL_PATH]  # a local path or URI; os.PathLike accepted
Paths = Annotated[list[PathStr], BeforeValidator(_as_list)]  # one or more (a single string is a list of one)
Size = Annotated[tuple[int, int], BeforeValidator(_parse_size)]  # (width, height); "1280x720" accepted
Numbers = Annotated[tuple[float, ...], BeforeValidator(_parse_numbers)]  # "0.8,0.1,0.1" accepted
# free options passed on to another component: plain YAML values (tuples become lists, so YAML round-trips)
Options = Annotated[dict[str, Any], AfterValidator(to_jsonable_python)]


# fields several jobs share
EndpointUrl = Annotated[str | None, opt("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")]
TrackingUri = Annotated[str | None, opt("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                                        "else MLflow's default sqlite:///mlflow.db)")]


class FieldError(ValueError):
    """Raised by a config's model validator about one field (a dotted path): its message is shown as it is, and a
    YAML file that set that field is named with it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------------------------- the classes
class JobConfig:
    """What every job config can do (the fields come from the `@job_config` dataclass)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, source: str | None = None) -> C:
        """The config from plain values (sections as mappings); `source` (a file name) prefixes error messages."""
        return build(cls, (data, source))

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with `changes` (a mapping for a section changes only the keys it names)."""
        return build(type(self), (self.to_dict(), None), (changes, None))

    def with_absolute_paths(self: C) -> C:
        """This config with its local paths (`PathStr`, `Paths` fields) absolute, against this process's folder: each
        job's driver starts with it. Ray's workers resolve a relative path against their own working folder, which
        is the driver's only when the driver started the local Ray itself, not when it joins a running one."""
        changes: dict[str, Any] = {}
        for name, info in self.__pydantic_fields__.items():  # type: ignore[attr-defined]
            value = getattr(self, name)
            if not _is_path_field(info) or not isinstance(value, (str, list)):
                continue
            new = absolute_local(value) if isinstance(value, str) else [absolute_local(v) for v in value]
            if new != value:
                changes[name] = new
        return self.replace(**changes) if changes else self

    def to_yaml(self, path: str | os.PathLike | None = None, *, exclude: tuple[str, ...] = (),
                header: str | None = None) -> str:
        """The config as YAML (every field; `from_yaml` reads it back to an equal config). With `path`, also
        written there; `header` becomes a leading comment."""
        import yaml

        values = {k: v for k, v in to_jsonable_python(self).items() if k not in exclude}
        text = yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
        if header:
            text = "".join(f"# {line}\n" for line in header.splitlines()) + text
        if path is not None:
            path = os.fspath(path)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_yaml(cls: type[C], path: str | os.PathLike, **overrides: Any) -> C:
        """The config in the YAML file `path` (keys: the field names, sections nested), `overrides` on top."""
        return build(cls, (read_yaml(path, cls), os.fspath(path)), (overrides, None))


class UsesS3:
    """For configs with an `s3_endpoint_url: EndpointUrl` field."""

    @property
    def endpoint_url(self) -> str | None:
        """The S3 endpoint: the config's, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."""
        return self.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def job_config(cls: type[C]) -> type[C]:
    """Make `cls` a job config: a frozen pydantic dataclass that refuses unknown fields and raises `ConfigError`."""
    cls = pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **_merge_sections(type(self), kwargs))
        except ValidationError as exc:
            raise ConfigError(problems(type(self), exc)) from None

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def build(cls: type[C], *layers: tuple[Mapping[str, Any], str | None]) -> C:
    """`cls` from mappings merged in order (later ones win; sections merge key by key). Each layer may name its
    source (a YAML file): messages about keys it set last start with that name."""
    merged: dict[str, Any] = {}
    origin: dict[str, str | None] = {}
    for values, source in layers:
        if not isinstance(values, Mapping):
            where = f"{source}: " if source else ""
            raise ConfigError([("", f"{where}expected a mapping of {cls.__name__} fields, got {type(values).__name__}")])
        if any(not isinstance(k, str) for k in values):
            where = f"{source}: " if source else ""
            raise ConfigError([("", f"{where}unknown fields: {', '.join(str(k) for k in values if not isinstance(k, str))}")])
        _deep_merge(merged, values, origin, source)
    try:
        return cls(**merged)
    except ConfigError as exc:
        if not any(origin.values()):
            raise
        out = []
        for path, msg in exc.problems:
            source = next((origin[p] for p in _prefixes(path) if p in origin), None)
            if source:
                msg = f"{source}: {msg}" if (not path or path in msg) else f"{source}: {path}: {msg}"
            out.append((path, msg))
        raise ConfigError(out) from None


def read_yaml(path: str | os.PathLike, cls: type | None = None) -> dict[str, Any]:
    """The mapping in a YAML file, or a one-line `UserError`."""
    import yaml

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror or exc}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([("", f"{path}: not valid YAML{where}: {problem}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        what = f"{cls.__name__} fields" if cls else "keys"
        raise ConfigError([("", f"{path}: expected a mapping of {what}, got {type(data).__name__}")])
    return data


def _deep_merge(into: dict, values: Mapping, origin: dict, source: str | None, prefix: str = "") -> None:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value, origin, source, f"{path}.")
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
            for p in [p for p in origin if p == path or p.startswith(f"{path}.")]:
                del origin[p]
        origin[path] = source


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _merge_sections(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A mapping given for a section field is merged onto that section's default."""
    fields = cls.__pydantic_fields__
    out = dict(kwargs)
    for name, value in kwargs.items():
        info = fields.get(name)
        if isinstance(value, Mapping) and info is not None and _is_config(info.annotation):
            default = info.get_default(call_default_factory=True)
            if dataclasses.is_dataclass(default):
                out[name] = {**_shallow(default), **value}
    return out


def _shallow(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, JobConfig) and dataclasses.is_dataclass(tp)


# ----------------------------------------------------------------------------------------- introspection
@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """One command-line argument of a job config (see `cli_flags`)."""

    path: tuple[str, ...]  # ("faces", "detect_max_side")
    cli: dict  # flag, short, metavar, negative, negative_help, positional
    help: str | None
    annotation: Any  # the field's type without its metadata, e.g. int | None
    default: Any  # PydanticUndefined when required

    @property
    def dest(self) -> str:
        return ".".join(self.path)

    @property
    def label(self) -> str:
        return self.cli.get("flag") or self.cli.get("metavar") or self.dest


def cli_info(info: FieldInfo | None) -> dict:
    extra = info.json_schema_extra if info is not None else None
    return dict(extra.get(_CLI) or {}) if isinstance(extra, dict) else {}


@functools.cache
def cli_flags(cls: type) -> tuple[FlagSpec, ...]:
    """The command-line arguments of `cls`, in field order (a section's in the order the job lists them)."""
    out = []
    for name, info in cls.__pydantic_fields__.items():
        cli = cli_info(info)
        default = info.get_default(call_default_factory=True)
        if "section" in cli:
            sub_fields = info.annotation.__pydantic_fields__
            for sub, reworded in cli["section"].items():
                sub_info = sub_fields[sub]
                sub_default = getattr(default, sub) if default is not PydanticUndefined else sub_info.default
                out.append(_spec((name, sub), cli_info(sub_info), reworded or sub_info.description, sub_info, sub_default))
        elif cli.get("flag") or cli.get("positional"):
            out.append(_spec((name,), cli, info.description, info, default))
    return tuple(out)


def _spec(path: tuple[str, ...], cli: dict, help: str | None, info: FieldInfo, default: Any) -> FlagSpec:
    if help and "{default}" in help:
        help = help.replace("{default}", _show(default))
    return FlagSpec(path, cli, help, info.annotation, default)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value)
    return str(value)


def unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed): `int | None` -> (int, True)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    args = get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (unwrap(rest[0])[0] if len(rest) == 1 else Union[tuple(rest)]), True
    return annotation, False


def choices(annotation: Any) -> tuple | None:
    """The allowed values of a Literal field (None for other types)."""
    base, _ = unwrap(annotation)
    return get_args(base) if get_origin(base) is Literal else None


def _field(cls: type, path: list[str]) -> FieldInfo | None:
    info = None
    for part in path:
        fields = getattr(cls, "__pydantic_fields__", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        cls = unwrap(info.annotation)[0]
    return info


def field_paths(cls: type, prefix: str = "") -> list[str]:
    out = []
    for name, info in cls.__pydantic_fields__.items():
        out.append(prefix + name)
        if _is_config(info.annotation):
            out += field_paths(info.annotation, f"{prefix}{name}.")
    return out


# ------------------------------------------------------------------------------------------------- errors
def problems(cls: type, exc: ValidationError) -> list[tuple[str, str]]:
    """pydantic's errors as (dotted field path, one-line message naming the flag or the key)."""
    labels = {spec.dest: spec.label for spec in cli_flags(cls)}
    out: list[tuple[str, str]] = []
    unknown: list[str] = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if isinstance(p, str)]
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            out.append((".".join([*loc, cause.field]), str(cause)))
            continue
        path = ".".join(loc)
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            unknown.append(path)
            continue
        msg = _message(err, _field(cls, loc) if loc else None, labels.get(path, path))
        if (path, msg) not in out:
            out.append((path, msg))
    if unknown:
        out.insert(0, (unknown[0], "unknown fields: " + ", ".join(_suggest(cls, p) for p in unknown)))
    return [(p, redact(m)) for p, m in out]


def _message(err: dict, info: FieldInfo | None, label: str) -> str:
    kind, cli = err["type"], cli_info(info)
    if kind in ("value_error", "assertion_error"):
        text = str(err.get("ctx", {}).get("error", err["msg"]))
        return f"{label}: {text}" if info is not None else text
    if cli.get("error"):
        return cli["error"]
    if info is None:
        return err["msg"]
    base, _ = unwrap(info.annotation)
    if kind == "missing" or kind == "too_short":
        return f"no {label} given" if get_origin(base) is list else f"{label} is required"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{label} must be {_bounds(info)}"
    allowed = choices(info.annotation)
    if kind == "literal_error" and allowed:
        return f"{label}: invalid choice {err['input']!r} (choose from {', '.join(map(str, allowed))})"
    text = err["msg"][:1].lower() + err["msg"][1:]
    return f"{label}: {text} (got {err['input']!r})"


def _bounds(info: FieldInfo) -> str:
    b: dict[str, Any] = {}
    for m in info.metadata:
        for k in ("ge", "gt", "le", "lt"):
            if getattr(m, k, None) is not None:
                b[k] = _show(getattr(m, k))
    low = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    high = (b["le"], "]") if "le" in b else (b["lt"], ")") if "lt" in b else None
    if low and high:
        return f"within {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"at least {low[1]}" if low[0] == "[" else f"greater than {low[1]}"
    return f"at most {high[0]}" if high and high[1] == "]" else f"less than {high[0] if high else '?'}"


def _suggest(cls: type, path: str) -> str:
    """`path`, with the field it probably means."""
    flags = {spec.cli["flag"].lstrip("-").replace("-", "_"): spec.dest for spec in cli_flags(cls) if spec.cli.get("flag")}
    key = path.replace("-", "_")
    guess = flags.get(key)  # a flag's name used as a key: `workers`, `detect-every`
    if guess is None:
        close = difflib.get_close_matches(key, field_paths(cls), n=1, cutoff=0.6)
        guess = close[0] if close else None
    return f"{path} (did you mean {guess}?)" if guess and guess != path else path


__all__ = ["ConfigError", "EndpointUrl", "FieldError", "FlagSpec", "JobConfig", "Numbers", "Options", "PathStr", "Paths",
           "Size", "TrackingUri", "UsesS3", "arg", "build", "choices", "cli_flags", "job_config", "opt", "read_yaml",
           "section", "unwrap"]
