"""Block parameters: declared once with type, unit, default, range and a docstring line.

A block lists its parameters as ``Param`` objects; the flowgraph loader checks every value a
YAML file gives against them before anything starts (type, range, allowed choices), so a
user's mistake is one clear line and never a traceback from deep inside a work function.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

REQUIRED = object()  # sentinel: the parameter has no default


class ParamError(ValueError):
    """A parameter value is wrong; the message names the reason (the loader adds file, line, field)."""


@dataclass(frozen=True)
class Param:
    """One block parameter.

    ``type`` is one of ``float``, ``int``, ``str``, ``bool``, ``dict``, ``list`` or ``"any"``.
    ``low``/``high`` bound numbers (inclusive unless ``low_open``/``high_open``); ``choices`` lists
    allowed values; ``check`` is an optional extra validator returning an error string or None.
    """

    name: str
    type: Any = float
    default: Any = REQUIRED
    unit: str = ""
    doc: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def coerce(self, value: Any) -> Any:
        """Return ``value`` converted to this parameter's type, or raise ``ParamError``."""
        t = self.type
        if t == "any":
            v = value
        elif t is bool:
            if not isinstance(value, bool):
                raise ParamError(f"must be true or false, got {value!r}")
            v = value
        elif t is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
                raise ParamError(f"must be an integer, got {value!r}")
            v = int(value)
        elif t is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                # YAML 1.1 reads "1e-6" (no dot) as a string; accept numeric strings.
                try:
                    v = float(value) if isinstance(value, str) else None
                except ValueError:
                    v = None
                if v is None:
                    raise ParamError(f"must be a number, got {value!r}")
            else:
                v = float(value)
            if v != v:
                raise ParamError("must be a number, got NaN")
        elif t is str:
            if not isinstance(value, str):
                raise ParamError(f"must be a string, got {value!r}")
            v = value
        elif t is dict:
            if not isinstance(value, dict):
                raise ParamError(f"must be a mapping, got {type(value).__name__}")
            v = dict(value)
        elif t is list:
            if not isinstance(value, (list, tuple)):
                raise ParamError(f"must be a list, got {type(value).__name__}")
            v = list(value)
        else:  # pragma: no cover - programming error in a block declaration
            raise TypeError(f"unsupported parameter type {t!r}")
        if self.choices is not None and v not in self.choices:
            raise ParamError(f"must be one of {', '.join(map(str, self.choices))}, got {v!r}")
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            op = ">" if self.low_open else ">="
            raise ParamError(f"must be {op} {self.low:g}{self._u}, got {v!r}")
        if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
            op = "<" if self.high_open else "<="
            raise ParamError(f"must be {op} {self.high:g}{self._u}, got {v!r}")
        if self.check is not None:
            msg = self.check(v)
            if msg:
                raise ParamError(msg)
        return v

    @property
    def _u(self) -> str:
        return f" {self.unit}" if self.unit else ""

    def describe(self) -> str:
        """One line for ``qkdflow blocks``."""
        tname = self.type if isinstance(self.type, str) else self.type.__name__
        rng = ""
        if self.low is not None or self.high is not None:
            lo = "(" if self.low_open else "["
            hi = ")" if self.high_open else "]"
            rng = f" {lo}{'' if self.low is None else f'{self.low:g}'}, {'' if self.high is None else f'{self.high:g}'}{hi}"
        if self.choices:
            rng = " {" + ", ".join(map(str, self.choices)) + "}"
        dflt = "required" if self.required else f"default {self.default!r}"
        unit = f" [{self.unit}]" if self.unit else ""
        return f"{self.name}: {tname}{unit}{rng}, {dflt} — {self.doc}"


def probabilities_check(names: tuple[str, ...]) -> Callable[[Any], str | None]:
    """Validator for a mapping of probabilities over ``names`` that must sum to 1."""

    def check(v: dict) -> str | None:
        unknown = set(v) - set(names)
        if unknown:
            return f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: {', '.join(names)}"
        total = 0.0
        for k, p in v.items():
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                return f"{k}: probability must be in [0, 1], got {p!r}"
            total += p
        if abs(total - 1.0) > 1e-9:
            return f"probabilities must sum to 1, got {total:.12g}"
        return None

    return check
