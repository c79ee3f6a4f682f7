"""Config mistakes in one line, with the closest valid option.

jsonargparse reports a misspelled option as a usage screen (~60 lines) or a nested report of
every union member it tried. :func:`describe_config_error` turns either into one line naming
the option and, where one is close, the option that was probably meant (difflib).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _options(parser: Any, subcommand: str | None) -> list[str]:
    """Every ``--option`` the (sub)command's parser knows."""
    if parser is None:
        return []
    found: list[str] = []
    parsers = [parser]
    subs = getattr(parser, "_subcommands_action", None)
    if subs is not None:
        chosen = subs._name_parser_map.get(subcommand) if subcommand else None
        parsers = [chosen] if chosen is not None else list(subs._name_parser_map.values())
    for p in parsers:
        for action in getattr(p, "_actions", []):
            found.extend(o for o in action.option_strings if o.startswith("--"))
    return sorted(set(found))


def _init_params(class_path: str) -> list[str]:
    from bottlenecks.naming import accepted_options

    return accepted_options(class_path) or []  # a suggestion is optional


def _module_classes(module: str) -> list[str]:
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001
        return []
    return [n for n, v in vars(mod).items() if inspect.isclass(v) and not n.startswith("_")]


def describe_config_error(message: str, parser: Any = None, subcommand: str | None = None) -> str:
    """One line for a jsonargparse error message (see the module docstring)."""
    text = message.strip()
    unknown = re.match(r"unrecognized arguments: (.*)", text)
    if unknown:
        opts = [t for t in unknown.group(1).split() if t.startswith("--")]
        if not opts:
            return f"unexpected arguments: {unknown.group(1)}"
        known = _options(parser, subcommand)
        parts = [f"{o.split('=')[0]}{_closest(o.split('=')[0], known)}" for o in opts]
        return f"unknown option {', '.join(parts)}"
    choice = re.search(r"argument (\w+): invalid choice: '([^']*)' \(choose from (.*)\)", text)
    if choice:
        options = re.findall(r"'([^']*)'", choice.group(3))
        if choice.group(1) == "subcommand":  # the commands that are not Lightning runs too
            from bottlenecks.cli import TOOLS

            options += [t for t in TOOLS if t not in options]
        return f"unknown {choice.group(1)} {choice.group(2)!r}{_closest(choice.group(2), options)}; choose from {options}"
    keys = re.findall(r'Parser key "([^"]+)"', text)
    key = ".".join(keys) if keys else "config"
    classes = re.findall(r"Problem with given class_path '([^']+)'", text)
    option = re.search(r"Option '([^']+)' is not accepted", text)
    if option:
        owner = classes[-1] if classes else ""
        hint = _closest(option.group(1), _init_params(owner)) if owner else ""
        where = f" by {owner.rsplit('.', 1)[-1]}" if owner else ""
        return f"{key}: option {option.group(1)!r} is not accepted{where}{hint}"
    missing = re.search(r"module '([^']+)' has no attribute '([^']+)'", text)
    if missing:
        mod, name = missing.groups()
        return f"{key}: class {mod}.{name} does not exist{_closest(name, _module_classes(mod))}"
    no_module = re.search(r"No module named '([^']+)'", text)
    if no_module:
        return f"{key}: no module named {no_module.group(1)!r}"
    given = re.search(r"Given value: (.*)", text)
    expected = [e for e in re.findall(r"Expected a <class '([^']+)'>", text) if e != "NoneType"]
    if expected:
        got = f", got {given.group(1).strip()[:80]!r}" if given else ""
        return f"{key}: expected {' or '.join(expected)}{got}"
    # any other report: its most specific line (the deepest indented one that says something)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = [ln for ln in lines if not ln.startswith(("Parser key", "Does not validate", "Subtypes", "Errors",
                                                      "Given value", "- Expected a <class 'NoneType'>"))]
    body = detail[-1].lstrip("- ") if detail else (lines[0] if lines else text)
    return f"{key}: {body}" if keys else body
