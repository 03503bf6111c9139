"""Limits declared once: a dataclass field says its default, its range and, when a user may
set it, its command-line option and help.

:class:`~aisthetics_transforms.fetch.FetchLimits` and
:class:`~aisthetics_transforms.preprocess.DecodeLimits` declare their fields with
:func:`setting`; their own checks, the command line's options (``pipeline/options.py``
adds one per field that names an option) and its one-line range problems all read these
declarations, so a default, a bound or a help text is written in one place.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping


def setting(
    default: Any,
    *,
    least: float | None = None,
    above: float | None = None,
    option: str | None = None,
    help: str = "",  # noqa: A002 - argparse's word for it
    aliases: tuple[str, ...] = (),
) -> Any:
    """A dataclass field holding ``default``, valid when at least ``least`` or more than
    ``above`` (and finite); ``option``: the command-line option that sets it (``aliases``:
    earlier names of that option, still accepted with a warning)."""
    metadata = {"least": least, "above": above, "option": option, "help": help, "aliases": aliases}
    return dataclasses.field(default=default, metadata=metadata)


def option_fields(cls: type) -> Iterator[dataclasses.Field]:
    """The fields of ``cls`` that a command-line option sets, in declaration order."""
    return (f for f in dataclasses.fields(cls) if f.metadata.get("option"))


def option_values(cls: type, read: Callable[[str], Any]) -> dict[str, Any]:
    """Field name -> ``read(option name)`` for every field of ``cls`` an option sets."""
    return {f.name: read(f.metadata["option"]) for f in option_fields(cls)}


def problems(cls: type, values: Mapping[str, Any], name: Callable[[str], str]) -> list[str]:
    """One line per value of ``values`` (field name -> value) outside its field's range, then
    what ``cls.cross_problems`` finds between fields; ``name(field name)`` is how a line names
    a field (``FetchLimits.deadline`` in code, ``--fetch_deadline`` on the command line)."""
    found = []
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, least, above = values[f.name], f.metadata.get("least"), f.metadata.get("above")
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if least is not None and not (finite and value >= least):
            found.append(f"{name(f.name)} must be at least {least:g}, got {value}")
        elif above is not None and not (finite and value > above):
            found.append(f"{name(f.name)} must be more than {above:g}, got {value}")
    cross = getattr(cls, "cross_problems", None)
    return found if found or cross is None else cross(values, name)


def option_problems(cls: type, read: Callable[[str], Any]) -> list[str]:
    """:func:`problems` of the values the options of ``cls`` hold (``read(option name)``),
    each line naming the option (``--fetch_deadline must be more than 0, got 0.0``)."""
    options = {f.name: f.metadata["option"] for f in option_fields(cls)}
    return problems(cls, option_values(cls, read), lambda field: f"--{options[field]}")


def check(instance: Any) -> None:
    """Raise ValueError naming every field of a limits dataclass that is out of range."""
    cls = type(instance)
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}
    found = problems(cls, values, lambda field: f"{cls.__name__}.{field}")
    if found:
        raise ValueError("; ".join(found))
