"""One source for a config field's help: its pydantic `Field(description=...)` (peft style: every field carries its
help). `documented` appends to the class docstring an `Args:` section built from those descriptions
(sentence-transformers style), so help() and API docs (both read __doc__) show the text the fields hold, and nothing
written twice can drift apart; a field without a description fails at import."""
from __future__ import annotations

import inspect
import textwrap

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

WIDTH = 116


def _annotation(cls: type[BaseModel], name: str) -> str:
    """The field's type as written in the class body (the modules use `from __future__ import annotations`)."""
    for klass in cls.__mro__:
        written = inspect.get_annotations(klass).get(name)
        if written is not None:
            return written if isinstance(written, str) else getattr(written, "__name__", repr(written))
    return "Any"


def _shown(default: object) -> str:
    """A default as written in Python; a config object by the fields it sets."""
    if isinstance(default, BaseModel):
        given = [k for k in type(default).model_fields if k in default.model_fields_set]
        return f"{type(default).__name__}({', '.join(f'{k}={getattr(default, k)!r}' for k in given)})"
    return repr(default)


def args_section(cls: type[BaseModel]) -> str:
    """`Args:` with one entry per field: `name (type, default: <default>): description` (no default shown for a
    field built by a factory: its description says what it holds)."""
    lines = ["Args:"]
    for name, field in cls.model_fields.items():
        if not field.description:
            raise TypeError(f"{cls.__name__}.{name} has no description: give it Field(..., description=...)")
        default = "" if field.default_factory is not None or field.default is PydanticUndefined \
            else f", default: {_shown(field.default)}"
        lines += textwrap.wrap(f"{name} ({_annotation(cls, name)}{default}): {field.description}", WIDTH,
                               initial_indent="    ", subsequent_indent="        ", break_on_hyphens=False)
    return "\n".join(lines)


def documented(cls: type[BaseModel]) -> type[BaseModel]:
    """Class decorator: the class docstring followed by args_section(cls)."""
    cls.__doc__ = f"{inspect.cleandoc(cls.__doc__ or '')}\n\n{args_section(cls)}".lstrip()
    return cls
