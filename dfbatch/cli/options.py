"""A job command's flags come from its config class; `config_from_args(args)` builds the config they ask for.

    p = sub.add_parser("score", help=..., description=...)
    add_job_arguments(p, ScoreConfig)                  # one argument per field with a flag, --config, --print-config
    add_preset(p, "--reference", REFERENCE_PRESET, help=...)   # optional: named settings over the flags
    p.add_argument("--json", action="store_true")       # output options that are not part of the job stay here
    p.set_defaults(func=run)

    def run(args):
        cfg = config_from_args(args)     # a ScoreConfig: defaults < --config FILE < flags given < presets

Flags keep their defaults out of the namespace (argparse.SUPPRESS), so only the flags given override the file.
"""

from __future__ import annotations

import argparse
from typing import Any, get_args, get_origin

from pydantic_core import PydanticUndefined

from dfbatch.config.base import FlagSpec, JobConfig, build, choices, cli_flags, read_yaml, unwrap

_SCALARS = (int, float, str)


def add_job_arguments(parser: argparse.ArgumentParser, cls: type[JobConfig]) -> None:
    """Add an argument for every field of `cls` that has a flag (sections included), then --config and
    --print-config; `config_from_args(args)` then builds a `cls`."""
    for spec in cli_flags(cls):
        _add(parser, spec)
    parser.add_argument("--config", dest="config_file", default=None, metavar="FILE.yaml",
                        help=f"{cls.__name__} fields as YAML (see --print-config); flags given override it")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resulting config as YAML (usable with --config) and exit")
    parser.set_defaults(config_class=cls)


class _Preset(argparse.Action):
    def __init__(self, option_strings, dest, preset: dict, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)
        self.preset = preset

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        namespace.config_presets = [*getattr(namespace, "config_presets", []), self.preset]


def add_preset(parser: argparse.ArgumentParser, flag: str, values: dict, *, help: str) -> None:
    """A flag that sets several fields at once (sections as mappings), over the file and the other flags."""
    parser.add_argument(flag, action=_Preset, preset=values, help=help)


def config_from_args(args: argparse.Namespace, *, defaults: dict | None = None) -> Any:
    """The config of a command parsed with `add_job_arguments`: the class's defaults < `defaults` < the --config
    file < the flags given < presets. Mistakes are one-line `ConfigError`s (the file's keys named with it)."""
    cls = args.config_class
    given = vars(args)
    layers: list[tuple[dict, str | None]] = [(defaults or {}, None)]
    if getattr(args, "config_file", None):
        layers.append((read_yaml(args.config_file, cls), args.config_file))
    flags: dict[str, Any] = {}
    for spec in cli_flags(cls):
        if spec.dest in given:
            node = flags
            for part in spec.path[:-1]:
                node = node.setdefault(part, {})
            node[spec.path[-1]] = given[spec.dest]
    layers.append((flags, None))
    layers += [(preset, None) for preset in getattr(args, "config_presets", [])]
    return build(cls, *layers)


def _add(parser: argparse.ArgumentParser, spec: FlagSpec) -> None:
    cli = spec.cli
    base, _ = unwrap(spec.annotation)
    is_list = get_origin(base) is list
    allowed = choices(spec.annotation)
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": spec.help}
    if allowed:
        kwargs["choices"] = allowed
    elif base in _SCALARS or is_list:
        item = get_args(base)[0] if is_list else base
        kwargs["type"] = unwrap(item)[0] if unwrap(item)[0] in _SCALARS else str
    if cli.get("positional"):  # optional on the command line: --config may give it
        parser.add_argument(spec.dest, metavar=cli.get("metavar"), nargs="*" if is_list else "?", **kwargs)
        return
    names = [n for n in (cli.get("short"), cli["flag"]) if n]
    if spec.default is PydanticUndefined:
        kwargs["help"] = f"{spec.help or ''} (required: here or in --config)".strip()
    if base is bool:
        kwargs.pop("type", None)
        if cli.get("negative"):
            group = parser.add_mutually_exclusive_group()
            group.add_argument(*names, dest=spec.dest, action="store_const", const=True, **kwargs)
            group.add_argument(cli["negative"], dest=spec.dest, action="store_const", const=False,
                               default=argparse.SUPPRESS, help=cli.get("negative_help"))
        else:
            parser.add_argument(*names, dest=spec.dest, action="store_const", const=not spec.default, **kwargs)
        return
    if not allowed:
        kwargs["metavar"] = cli.get("metavar") or cli["flag"].lstrip("-").replace("-", "_").upper()
    if is_list:
        kwargs["nargs"] = "+"
    parser.add_argument(*names, dest=spec.dest, **kwargs)


__all__ = ["add_job_arguments", "add_preset", "config_from_args"]
