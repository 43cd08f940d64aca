"""Fronthaul source: eCPRI-like IQ-data packets at a fixed packet rate, as a stream of fixed-size packets.

Each item is one packet (structured dtype, :func:`plain_dtype`): ``slot`` (pulse slot at which it is sent,
link clock ``rate_hz``), ``seq`` (64-bit packet counter), ``t_ns`` (host ``time.monotonic_ns()`` when the
frame was emitted, for latency statistics on one host) and ``data`` = the ``packet_bytes`` bytes of an eCPRI
message: the 4-byte common header (revision 1, message type 0 "IQ data", payload size; eCPRI Specification
V2.0, Sec. 3.1.3.1 / 3.2.4.1), PC_ID (2 bytes), SEQ_ID (sequence byte = seq mod 256, E bit set, subsequence 0),
then big-endian int16 I/Q pairs of a complex tone ``A exp(2 pi i n / period)`` whose sample index ``n``
continues across packets (so every packet's bytes differ and the sink can regenerate them from ``seq``).
The IQ content is a test pattern, not a radio model.  Frames carry ``packets_per_frame`` packets and cover
the slots from their first packet's slot to the next frame's first slot; the pattern parameters travel in the
frame ``meta`` (key ``fronthaul``) so the sink can check integrity.  ``realtime: true`` paces emission to the
wall clock at ``packet_rate_hz``.
"""
from __future__ import annotations

import time

import numpy as np

from qkdflow.runtime.block import DONE, Block, Frame, Stream
from qkdflow.runtime.params import Param

ECPRI_HEADER_BYTES = 8  # common header (4) + PC_ID (2) + SEQ_ID (2)
META_KEY = "fronthaul"


def plain_dtype(packet_bytes: int) -> np.dtype:
    """Packet items of a plaintext fronthaul stream (24 bytes of metadata + the packet bytes)."""
    return np.dtype([("slot", "<u8"), ("seq", "<u8"), ("t_ns", "<i8"), ("data", "u1", (packet_bytes,))])


def packet_bytes_of(dtype: np.dtype) -> int:
    """``packet_bytes`` of a plaintext fronthaul dtype; ValueError for any other dtype."""
    if dtype.names != ("slot", "seq", "t_ns", "data") or dtype.fields["data"][0].shape == ():
        raise ValueError(f"not a fronthaul packet stream (dtype {dtype})")
    return int(dtype.fields["data"][0].shape[0])


def check_packet_bytes(packet_bytes: int) -> str | None:
    if packet_bytes < ECPRI_HEADER_BYTES + 4 or (packet_bytes - ECPRI_HEADER_BYTES) % 4:
        return (f"must be >= {ECPRI_HEADER_BYTES + 4} with (packet_bytes - {ECPRI_HEADER_BYTES}) a multiple of 4"
                f" (int16 I/Q pairs), got {packet_bytes}")
    if packet_bytes - 4 > 0xFFFF:
        return f"eCPRI payload size field is 16 bits: packet_bytes must be <= {0xFFFF + 4}, got {packet_bytes}"
    return None


class PacketPattern:
    """The deterministic packet bytes of the source, regenerated from sequence numbers (also by the sink)."""

    def __init__(self, packet_bytes: int, pc_id: int, tone_period_samples: int, amplitude: int) -> None:
        err = check_packet_bytes(packet_bytes)
        if err:
            raise ValueError(f"packet_bytes: {err}")
        self.packet_bytes, self.pc_id = packet_bytes, pc_id
        self.period, self.amplitude = tone_period_samples, amplitude
        self.samples = (packet_bytes - ECPRI_HEADER_BYTES) // 4
        n = np.arange(tone_period_samples)
        iq = np.empty((tone_period_samples, 2), dtype=">i2")
        iq[:, 0] = np.round(amplitude * np.cos(2 * np.pi * n / tone_period_samples))
        iq[:, 1] = np.round(amplitude * np.sin(2 * np.pi * n / tone_period_samples))
        self._table = iq.view(np.uint8).reshape(tone_period_samples, 4)
        payload = packet_bytes - 4
        self._head = np.array([0x10, 0x00, payload >> 8, payload & 0xFF, pc_id >> 8, pc_id & 0xFF, 0, 0x80],
                              dtype=np.uint8)
        self._k = np.arange(self.samples, dtype=np.int64)

    @property
    def meta(self) -> dict:
        return {"packet_bytes": self.packet_bytes, "pc_id": self.pc_id, "tone_period_samples": self.period,
                "amplitude": self.amplitude}

    @classmethod
    def from_meta(cls, meta: dict) -> "PacketPattern":
        return cls(int(meta["packet_bytes"]), int(meta["pc_id"]), int(meta["tone_period_samples"]),
                   int(meta["amplitude"]))

    def fill(self, seq: np.ndarray, out: np.ndarray) -> None:
        """Write the packets with sequence numbers ``seq`` into ``out`` (shape (len(seq), packet_bytes))."""
        out[:, :ECPRI_HEADER_BYTES] = self._head
        out[:, 6] = (seq & 0xFF).astype(np.uint8)
        idx = ((seq.astype(np.int64) % self.period)[:, None] * self.samples + self._k[None, :]) % self.period
        out[:, ECPRI_HEADER_BYTES:] = self._table[idx].reshape(len(seq), -1)


class FronthaulSource(Block):
    """eCPRI-like IQ packets (fixed size) at a packet rate, as frames of fixed-size packet items."""

    category = "fronthaul"
    params = (
        Param("packets", int, 10_000, doc="packets to emit in total", low=0),
        Param("packet_bytes", int, 1500, unit="bytes", doc="eCPRI message size (header + IQ)",
              check=check_packet_bytes),
        Param("packet_rate_hz", float, 100_000.0, unit="Hz", doc="packets per second", low=0.0, low_open=True),
        Param("packets_per_frame", int, 64, doc="packets per output frame", low=1),
        Param("rate_hz", float, 1.0e9, unit="Hz", doc="link clock (slot rate); from clock.rate_hz", low=0.0,
              low_open=True),
        Param("pc_id", int, 0, doc="eCPRI PC_ID (physical channel id)", low=0, high=0xFFFF),
        Param("tone_period_samples", int, 1000, unit="samples", doc="period of the IQ test tone", low=1),
        Param("amplitude", int, 8000, doc="IQ tone amplitude (int16 units)", low=0, high=32767),
        Param("realtime", bool, False, doc="pace emission to the wall clock at packet_rate_hz"),
    )
    outputs = (Stream("out", None, doc="fronthaul packets {slot, seq, t_ns, data[packet_bytes]}"),)

    def validate(self) -> list[str]:
        if self.packet_rate_hz > self.rate_hz:
            return [f"packet_rate_hz: at most one packet per slot (rate_hz {self.rate_hz:g}), got "
                    f"{self.packet_rate_hz:g}"]
        return []

    def start(self) -> None:
        self.pattern = PacketPattern(self.packet_bytes, self.pc_id, self.tone_period_samples, self.amplitude)
        self.dtype = plain_dtype(self.packet_bytes)
        self.sent = 0
        self.slots_per_packet = self.rate_hz / self.packet_rate_hz
        self.t0 = time.monotonic()

    def _slot(self, k: np.ndarray | int) -> np.ndarray:
        return np.floor(np.asarray(k, dtype=np.float64) * self.slots_per_packet).astype(np.uint64)

    def work(self, ins):
        if self.sent >= self.packets:
            return DONE
        n = min(self.packets_per_frame, self.packets - self.sent)
        seq = np.arange(self.sent, self.sent + n, dtype=np.uint64)
        out = np.empty(n, self.dtype)
        out["seq"] = seq
        out["slot"] = self._slot(seq)
        self.pattern.fill(seq, out["data"])
        if self.realtime:
            due = self.t0 + (self.sent + n - 1) / self.packet_rate_hz
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        out["t_ns"] = time.monotonic_ns()
        start, stop = int(self._slot(self.sent)), int(self._slot(self.sent + n))
        self.sent += n
        self.count("packets", n)
        self.count("bytes", n * self.packet_bytes)
        return {"out": Frame(start, stop, out, meta={META_KEY: self.pattern.meta})}
