"""One convention for options: each step's options are a pydantic model whose fields hold the
defaults (written once, there), loaded from a config's dict by ``Options.from_dict``.

``from_dict`` is the one loader: the defaults, then ``base`` (a recipe's own defaults), then the
config's options, nested option models (``training.augment``) included. An unknown key is an error
that names the key, where it is and the keys known there; a bad value is an error that names the
option. docs/configuration.md lists every option with its default (tests/test_docs.py checks it).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


class Options(BaseModel):
    """Base of every options model: unknown keys are rejected, values are checked on creation."""

    model_config = ConfigDict(extra="forbid")

    WHERE: ClassVar[str] = "options"
    """How messages name these options by default: the config key they are given under."""

    @classmethod
    def from_dict(
        cls,
        options: dict[str, Any] | None = None,
        base: dict[str, Any] | None = None,
        where: str | None = None,
    ):
        """The defaults, then ``base``, then ``options``; unknown or bad options are errors (a
        ``ValueError`` naming them and ``where`` they are, e.g.
        ``steps.train.parameters.training``)."""
        where = where or cls.WHERE
        merged = {**(base or {}), **(options or {})}
        check_keys(cls, merged, where)
        try:
            return cls.model_validate(merged)
        except ValidationError as e:
            raise ValueError(explain(e, where)) from None


def check_keys(cls: type[Options], options: dict[str, Any], where: str) -> None:
    """Raise a ValueError naming any key of ``options`` (or of a nested options dict) that ``cls``
    does not know, where it is and the keys known there."""
    known = list(cls.model_fields)
    unknown = sorted(set(options) - set(known))
    if unknown:
        what = where.rpartition(".")[2]
        raise ValueError(f"unknown {what} option(s) {unknown} in {where}; known: {sorted(known)}")
    for name, value in options.items():
        nested = cls.model_fields[name].annotation
        if isinstance(nested, type) and issubclass(nested, Options) and isinstance(value, dict):
            check_keys(nested, value, f"{where}.{name}")


def explain(error: ValidationError, where: str) -> str:
    """A pydantic validation error as one line per problem, each naming the option."""
    lines = []
    for e in error.errors():
        loc = ".".join(str(p) for p in (where, *e["loc"]))
        if e["type"] == "value_error":  # a check of the model's own: its message says it all
            lines.append(str(e["ctx"]["error"]))
        else:
            lines.append(f"{loc}: {e['msg']} (got {e['input']!r})")
    return "; ".join(lines)
