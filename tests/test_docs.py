"""The docs stay true to the code: every module path, dotted `dfbatch.x.y` name and backticked function or class in
README.md and docs/*.md exists (in the module its table row or section names, where it names one), every
`from dfbatch... import ...` in their code blocks imports, and the README's `dfbatch score` flags, choices and
defaults are the command's (the typed config is the source of truth)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
from functools import cache
from pathlib import Path

import pytest

import dfbatch

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
TICKS = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"^(?:dfbatch/)?[\w./-]+(?:\.py|/)$")  # a module or package as tables name them
REPO_PATH = re.compile(r"^(?:(?:dfbatch|tests|docs|jobs|cluster)/[\w./-]*|[\w./-]+\.(?:py|md))$")
DOTTED = re.compile(r"\bdfbatch(?:\.\w+)+")
CLASS = re.compile(r"^([A-Z][a-z]+[A-Z]\w*)(?:\(|$)")  # `ModelSpec`, `FaceStage` in a row about a module
CALL = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\(")  # `name(...)`, `Class.method(...)`, `module.name(...)`


def _prose(text: str) -> str:
    return FENCE.sub("", text)


@cache
def modules() -> dict[str, object]:
    """Every dfbatch module by dotted name (imported)."""
    out = {"dfbatch": dfbatch}
    for info in pkgutil.walk_packages(dfbatch.__path__, "dfbatch."):
        if not info.name.endswith("__main__"):  # runs the CLI
            out[info.name] = importlib.import_module(info.name)
    return out


def _file_of(token: str) -> Path | None:
    """A path as docs write it: from the repo root, from dfbatch/, or a file name unique under dfbatch/."""
    token = token.rstrip("/")
    for base in (REPO, REPO / "dfbatch"):
        if (base / token).exists():
            return base / token
    if "/" not in token:
        found = list((REPO / "dfbatch").rglob(token))
        if len(found) == 1:
            return found[0]
    return None


def _module_of(path: Path) -> object | None:
    rel = path.relative_to(REPO).with_suffix("") if path.suffix == ".py" else path.relative_to(REPO)
    return modules().get(".".join(p for p in rel.parts if p != "__init__"))


def _attr(obj, dotted: str) -> bool:
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _defined(module, dotted: str) -> bool:
    """`dotted` (name, Class.attr) is defined in `module` (a package: in any of its modules); a bare name may
    also be a method of one of its classes (`to_dict()` in a row about `ModelSpec`)."""
    mods = [module]
    if hasattr(module, "__path__"):
        mods += [m for n, m in modules().items() if n.startswith(module.__name__ + ".")]
    for m in mods:
        if _attr(m, dotted):
            return True
        if "." not in dotted and any(_attr(c, dotted) for _, c in inspect.getmembers(m, inspect.isclass)
                                     if c.__module__ == m.__name__):
            return True
    return False


def _anywhere(dotted: str) -> bool:
    """`dotted` is defined in some dfbatch module, or starts with a module's short name (`registry.fetch`)."""
    head, _, rest = dotted.partition(".")
    short = {n.rsplit(".", 1)[-1]: m for n, m in modules().items()}
    if rest and head in short and _defined(short[head], rest):
        return True
    return any(_defined(m, dotted) for m in modules().values())


def _resolvable(dotted: str) -> bool:
    """A bare name, or a dotted one whose head is a dfbatch module's short name or a dfbatch class (a variable such
    as `cfg.replace(...)` or an outside library cannot be checked)."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return True
    if head in {n.rsplit(".", 1)[-1] for n in modules()}:
        return True
    return any(inspect.isclass(getattr(m, head, None)) for m in modules().values())


def _units(text: str):
    """(context modules, line) per table row / paragraph: the modules a row's first cell or a section heading names."""
    heading_mods: list = []
    for block in re.split(r"\n(?=#)", _prose(text)):
        lines = block.splitlines()
        if lines and lines[0].startswith("#"):
            heading_mods = [m for t in re.findall(r"[\w/]+\.py|[\w/]+/", lines[0]) if (f := _file_of(t))
                            and (m := _module_of(f))]
        for line in lines:
            row_mods = []
            if line.startswith("|"):
                first = line.split("|")[1]
                row_mods = [m for t in TICKS.findall(first) if PATH.match(t) and (f := _file_of(t))
                            and (m := _module_of(f))]
            yield row_mods or heading_mods, line


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_paths_and_dotted_names_exist(doc):
    text = doc.read_text()
    wrong = []
    for token in TICKS.findall(_prose(text)):
        for t in re.split(r"[\s,()]+", token):
            if REPO_PATH.match(t) and _file_of(t) is None:
                wrong.append(f"no such file: {t}")
    for match in DOTTED.finditer(text):
        name, parts = match.group(0), match.group(0).split(".")
        before = text[max(0, match.start() - 120):match.start()]
        if not hasattr(dfbatch, parts[1]) and parts[1] not in {n.split(".")[1] for n in modules() if "." in n} \
                and re.search(r"\btags?\b", before):
            continue  # an MLflow tag named dfbatch.something
        for n in range(len(parts), 0, -1):
            mod = modules().get(".".join(parts[:n]))
            if mod is not None:
                if n < len(parts) and not _attr(mod, ".".join(parts[n:])):
                    wrong.append(f"{name}: {'.'.join(parts[:n])} has no {'.'.join(parts[n:])}")
                break
        else:
            wrong.append(f"{name}: no such module")
    assert not wrong, f"{doc.name}:\n" + "\n".join(sorted(set(wrong)))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_functions_and_classes_exist_where_the_docs_say(doc):
    wrong = []
    for mods, line in _units(doc.read_text()):
        for token in TICKS.findall(line):
            m = CALL.match(token.strip()) or (CLASS.match(token.strip()) if mods else None)
            if not m or not _resolvable(m.group(1)):
                continue
            name = m.group(1)
            ok = any(_defined(mod, name) for mod in mods) if mods else _anywhere(name)
            if not ok and mods and _anywhere(name):  # named in a row of another module: say where it lives
                wrong.append(f"{name} is not in {', '.join(x.__name__ for x in mods)}: {line.strip()[:100]}")
            elif not ok:
                wrong.append(f"{name} does not exist: {line.strip()[:100]}")
    assert not wrong, f"{doc.name}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_code_block_imports_import(doc):
    wrong = []
    for block in re.findall(r"^```(?:python|py)\n(.*?)^```", doc.read_text(), re.S | re.M):
        for mod, names in re.findall(r"^\s*from (dfbatch[\w.]*) import ([\w, ]+)", block, re.M):
            for name in (n.strip() for n in names.split(",")):
                if not hasattr(importlib.import_module(mod), name):
                    wrong.append(f"from {mod} import {name}")
    assert not wrong, f"{doc.name}: " + "; ".join(wrong)


# ------------------------------------------------------------------------------------- dfbatch score's flags
def _score_parser() -> argparse.ArgumentParser:
    from dfbatch.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["score"]


def _readme_score_section() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("## Score an archive"):text.index("## Look at the results")]


def _score_flag_problems(section: str) -> list[str]:
    """What in `section` (the README's scoring section) disagrees with `dfbatch score`: flags named, choices
    listed, and the flags table (every flag, the config's defaults)."""
    from pydantic_core import PydanticUndefined

    from dfbatch.config import ScoreConfig
    from dfbatch.config.base import _show, cli_flags

    parser = _score_parser()
    options = {s: a for a in parser._actions for s in a.option_strings}
    wrong = []
    # every flag the section names exists, with the choices it lists
    for flag, choices in re.findall(r"`(--[\w-]+)(?: ((?:\w+\\?\|)+\w+))?", section):
        choices = choices.replace("\\|", "|")
        if flag not in options:
            wrong.append(f"{flag}: not a `dfbatch score` flag")
        elif choices and set(choices.split("|")) != set(options[flag].choices or ()):
            wrong.append(f"{flag} {choices}: the choices are {'|'.join(options[flag].choices or ())}")
    # the flags table: every flag of the command, with the config's default
    rows = re.findall(r"^\| `(--[\w-]+)[^`]*`(?: \(`-\w`\))? \| ([^|]*) \|", section, re.M)
    documented = {flag: default.strip() for flag, default in rows}
    defaults = {spec.cli["flag"]: spec.default for spec in cli_flags(ScoreConfig) if spec.cli.get("flag")}
    commands = {s for a in parser._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    for flag in sorted(commands - set(documented)):
        wrong.append(f"{flag}: missing from the README's flags table")
    for flag in sorted(set(documented) - commands):
        wrong.append(f"{flag}: in the README's flags table, not a flag of `dfbatch score`")
    for flag, default in defaults.items():
        cell = documented.get(flag)
        if cell is None:
            continue
        if default is PydanticUndefined:
            if cell != "required":
                wrong.append(f"{flag}: required, the README says default {cell!r}")
        elif isinstance(default, bool):
            if cell != "off":  # a switch: the flag turns it on
                wrong.append(f"{flag}: a switch, the README says default {cell!r}")
        elif default is None:  # decided at run time: the README says by what, not a literal
            if re.fullmatch(r"`[^`]*`", cell) and cell.strip("`") == "None":
                wrong.append(f"{flag}: README says default {cell!r}")
        elif cell != f"`{_show(default)}`":
            wrong.append(f"{flag}: README says default {cell!r}, the config's is `{_show(default)}`")
    help_text = parser.format_help()
    for flag in documented:
        if flag not in help_text:
            wrong.append(f"{flag}: not in `dfbatch score --help`")
    return wrong


def test_readme_score_flags_and_defaults_are_the_commands():
    wrong = _score_flag_problems(_readme_score_section())
    assert not wrong, "\n".join(wrong)


def _modules_named(text: str) -> set[Path]:
    """The dfbatch modules a document's tables name by path (`stages/decode.py`, or a file name unique in the package)."""
    named = set()
    for line in _prose(text).splitlines():
        if line.startswith("|"):
            for token in TICKS.findall(line):
                for t in re.split(r"[\s,()]+", token):
                    if t.endswith(".py") and (f := _file_of(t)) is not None:
                        named.add(f.resolve())
    return named


def _undocumented(text: str) -> list[str]:
    package = REPO / "dfbatch"
    return sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                  if p.name not in ("__init__.py", "__main__.py") and p.resolve() not in _modules_named(text))


def test_architecture_names_every_module():
    """docs/ARCHITECTURE.md's tables name every module of the package: a new module cannot go undocumented."""
    missing = _undocumented((REPO / "docs" / "ARCHITECTURE.md").read_text())
    assert not missing, "modules missing from docs/ARCHITECTURE.md's tables: " + ", ".join(missing)


def test_the_checks_catch_stale_docs():
    """The checkers above flag what they must (so a passing run means something)."""
    assert _anywhere("stages.score.Scorer") and _anywhere("registry.fetch") and _anywhere("read_frames")
    assert not _anywhere("Scorer.score_rows") and not _anywhere("sources.iter_videos")
    assert _resolvable("Scorer.score_rows") and _resolvable("registry.fetch") and not _resolvable("cfg.replace")
    assert _file_of("io/listing.py") and _file_of("spec.py") and not _file_of("dfbatch/sources.py")
    mods = [m for m, line in _units("| `stages/decode.py` | `sample_indices(n, k)` |\n")][0]
    assert [m.__name__ for m in mods] == ["dfbatch.stages.decode"]
    assert inspect.ismodule(modules()["dfbatch.models.spec"])
    architecture = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    assert _undocumented(architecture.replace("`stages/crops.py`", "`stages/crops`")) == ["stages/crops.py"]
    assert "monitor.py" in _undocumented(architecture.replace("| `monitor.py` |", "| monitor |"))
    section = _readme_score_section()
    stale = (section.replace("| `--batch-size N` | `16` |", "| `--batch-size N` | `8` |")
             .replace("| `--json` | – | print the summary as JSON: stdout then holds the JSON alone (Ray's own output goes to "
                      "stderr), for `jq` or a script |\n", "| `--gpus N` | `1` | |\n")
             .replace("`--device auto\\|cpu\\|cuda`", "`--device auto\\|cpu\\|tpu`"))
    problems = _score_flag_problems(stale)
    assert problems == ["--device auto|cpu|tpu: the choices are auto|cpu|cuda", "--gpus: not a `dfbatch score` flag",
                        "--json: missing from the README's flags table",
                        "--gpus: in the README's flags table, not a flag of `dfbatch score`",
                        "--batch-size: README says default '`8`', the config's is `16`",
                        "--gpus: not in `dfbatch score --help`"], problems
