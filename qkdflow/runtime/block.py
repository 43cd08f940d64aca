"""Block base class, ports, frames and tags.

A block is a small class in the GNU Radio / LuaRadio style:

.. code-block:: python

    class Scale(Block):
        '''Multiply every item by k.'''
        params = (Param("k", float, 2.0, doc="gain"),)
        inputs = (Stream("in", np.float32),)
        outputs = (Stream("out", np.float32),)

        def work(self, ins):
            f = ins["in"]
            return {"out": f.with_data(f.data * self.k)}

* ``params`` are validated by the flowgraph loader and set as attributes before ``start()``.
* Stream ports carry :class:`Frame` objects: a numpy array (any dtype, structured allowed)
  covering the half-open pulse-slot range ``[start, stop)`` plus tags with absolute offsets and
  a small JSON-able ``meta`` mapping. A block is called once per aligned set of input frames.
* Message ports carry typed messages (mappings of str -> scalars, strings, bytes, numpy arrays,
  lists and nested mappings). ``handle(port, msg)`` receives them; ``self.emit(port, msg)``
  sends them. Message edges may form cycles (the AAU and DU halves of a protocol).
* A source (no stream inputs) returns :data:`DONE` from ``work`` when it has nothing more.
* ``self.count(name, n)`` adds to a counter reported in the run summary.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np

from .params import Param, ParamError


class _Done:
    def __repr__(self) -> str:
        return "DONE"


#: Returned by a source's ``work`` when its stream has ended.
DONE = _Done()


@dataclass(frozen=True)
class Tag:
    """A stream tag, as GNU Radio: absolute slot offset, key, value, source id."""

    offset: int
    key: str
    value: Any
    srcid: str = ""


@dataclass(frozen=True)
class Stream:
    """A stream port. ``dtype=None`` accepts any dtype (checked per frame instead of at load)."""

    name: str
    dtype: Any = None
    optional: bool = False
    doc: str = ""

    @property
    def np_dtype(self) -> np.dtype | None:
        return None if self.dtype is None else np.dtype(self.dtype)

    def describe(self) -> str:
        dt = "any" if self.dtype is None else _dtype_name(np.dtype(self.dtype))
        return f"{self.name} (stream {dt}{', optional' if self.optional else ''}){' — ' + self.doc if self.doc else ''}"


@dataclass(frozen=True)
class Message:
    """A message port. Messages are mappings; ``kind`` names the message family for type checks."""

    name: str
    kind: str = "any"
    optional: bool = True
    doc: str = ""

    def describe(self) -> str:
        return f"{self.name} (message {self.kind}{', optional' if self.optional else ''}){' — ' + self.doc if self.doc else ''}"


def _dtype_name(dt: np.dtype) -> str:
    if dt.names:
        return "{" + ", ".join(f"{n}:{dt.fields[n][0].str}" for n in dt.names) + "}"
    return dt.str


@dataclass
class Frame:
    """Items covering pulse slots ``[start, stop)``.

    ``data`` is a 1-D numpy array (dense per-slot items, or sparse events that carry their own
    ``slot`` field). ``meta`` holds small JSON-able descriptors (e.g. a lazy photon field);
    ``tags`` carry absolute offsets.
    """

    start: int
    stop: int
    data: np.ndarray
    tags: list[Tag] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def slots(self) -> int:
        return self.stop - self.start

    def with_data(self, data: np.ndarray, **meta: Any) -> "Frame":
        """A frame over the same slots with new items (tags kept, ``meta`` updated)."""
        m = dict(self.meta)
        m.update(meta)
        return Frame(self.start, self.stop, data, list(self.tags), m)


class BlockError(RuntimeError):
    """Raised by a block for a runtime problem it can describe (the runtime names block and node)."""


class Block:
    """Base class of every qkdflow block. Subclasses declare ``params``, ``inputs``, ``outputs``."""

    params: ClassVar[tuple[Param, ...]] = ()
    inputs: ClassVar[tuple[Stream | Message, ...]] = ()
    outputs: ClassVar[tuple[Stream | Message, ...]] = ()
    #: Short category for ``qkdflow blocks`` (e.g. "optics", "detector", "post-processing").
    category: ClassVar[str] = "misc"

    def __init__(self, name: str = "", **values: Any) -> None:
        self.name = name or type(self).__name__
        self.node = ""
        self.graph = None  # the loaded Graph, set by the runtime before start()
        self.counters: dict[str, float] = {}
        self._emit = None  # set by the scheduler
        self._finished = False
        declared = {p.name: p for p in self.params}
        unknown = set(values) - set(declared)
        if unknown:
            raise ParamError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        for p in self.params:
            if p.name in values:
                setattr(self, p.name, p.coerce(values[p.name]))
            elif p.required:
                raise ParamError(f"{p.name}: required parameter missing")
            else:
                setattr(self, p.name, p.default)

    # ---- declarations --------------------------------------------------------------------
    @classmethod
    def stream_inputs(cls) -> list[Stream]:
        return [p for p in cls.inputs if isinstance(p, Stream)]

    @classmethod
    def stream_outputs(cls) -> list[Stream]:
        return [p for p in cls.outputs if isinstance(p, Stream)]

    @classmethod
    def message_inputs(cls) -> list[Message]:
        return [p for p in cls.inputs if isinstance(p, Message)]

    @classmethod
    def message_outputs(cls) -> list[Message]:
        return [p for p in cls.outputs if isinstance(p, Message)]

    @classmethod
    def port(cls, direction: str, name: str) -> Stream | Message | None:
        for p in cls.inputs if direction == "in" else cls.outputs:
            if p.name == name:
                return p
        return None

    @classmethod
    def doc_line(cls) -> str:
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    # ---- life cycle (override what you need) ---------------------------------------------
    def validate(self) -> list[str]:
        """Cross-parameter checks at load time: return a list of ``"field: reason"`` strings."""
        return []

    def start(self) -> None:
        """Called once in the block's thread before the first ``work``."""

    def work(self, ins: Mapping[str, Frame]) -> Mapping[str, Frame] | _Done | None:
        """Process one aligned set of input frames; return output frames by port name."""
        raise NotImplementedError

    def handle(self, port: str, msg: dict) -> None:
        """A message arrived on input port ``port``."""
        raise BlockError(f"no handler for messages on port {port!r}")

    def finished(self) -> bool:
        """Whether this block has nothing more to say once its stream inputs ended.

        Default: True. Protocol blocks with message cycles return False until their exchange is
        complete; the runtime keeps delivering messages until then.
        """
        return True

    def awaiting_peer(self) -> tuple[float, str] | None:
        """What this block waits for from a block in another node, if anything: (monotonic time since when, what).

        Default: None. The runtime stops the run with a clear error when the wait exceeds the node's
        ``peer_timeout_s``: a peer that is alive but never answers (stuck, or its connection stalled on a
        corrupted frame length, which TCP keepalive and the liveness watchdog cannot see) must not hang the node.
        Called by the runtime at least every few hundred milliseconds; keep it cheap.
        """
        return None

    def end(self) -> Mapping[str, Frame] | None:
        """Called once when every stream input has ended; may return last frames."""
        return None

    def stop(self) -> None:
        """Called once after the block's last output (close files, write plots)."""

    def report(self) -> dict:
        """Extra figures for the run summary (counters are always included)."""
        return {}

    # ---- helpers for subclasses ----------------------------------------------------------
    def emit(self, port: str, msg: dict) -> None:
        """Send a message on output message port ``port``."""
        if self._emit is None:
            raise BlockError("emit() called outside a running flowgraph")
        self._emit(port, msg)

    def replenish_authentication(self, key_bits: np.ndarray, entry_id: str | None = None, send: bool = True) -> None:
        """Feed new key to this node's Wegman–Carter key pool (``runtime.auth``), as entry ``entry_id``.

        ``send=False``: the peer may not hold this entry yet, so this end only verifies with it until
        ``authorize_authentication(entry_id)``."""
        if getattr(self, "_replenish", None) is not None:
            self._replenish(key_bits, entry_id=entry_id, send=send)

    def authorize_authentication(self, entry_id: str) -> None:
        """The peer now holds entry ``entry_id`` too: this end may tag with it."""
        if getattr(self, "_authorize", None) is not None:
            self._authorize(entry_id)

    def count(self, name: str, n: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def log(self, text: str) -> None:
        """A log line on stderr, prefixed with node and block (the runtime's log format)."""
        print(f"[{self.node or '-'}:{self.name}] {text}", file=sys.stderr, flush=True)
