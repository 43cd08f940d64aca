"""Fronthaul sink: check every packet against the source's pattern; count loss, reordering; latency statistics.

Regenerates the expected bytes of each packet from its ``seq`` and the pattern parameters the source put in
the frame ``meta`` (``fronthaul_source.PacketPattern``) and compares them byte for byte.  Latency per packet
= ``time.monotonic_ns()`` on arrival minus the source's ``t_ns`` (meaningful when source and sink share a
host clock; queueing in the flowgraph is included).  Reports ``packets_ok``, ``packets_corrupt``,
``packets_missing`` (sequence numbers never seen below the highest seen), ``packets_out_of_order``
(including duplicates) and latency median / p99 / max in microseconds (from up to ``max_latency_samples``
packets, the first ones).
"""
from __future__ import annotations

import time

import numpy as np

from blocks.fronthaul_source import META_KEY, PacketPattern, packet_bytes_of
from qkdflow.runtime.block import Block, BlockError, Stream
from qkdflow.runtime.params import Param


class FronthaulSink(Block):
    """Check fronthaul packets against the source pattern; count loss and corruption; latency statistics."""

    category = "fronthaul"
    params = (
        Param("max_latency_samples", int, 1_000_000, doc="latency samples kept for the statistics", low=0),
        Param("fail_on_corrupt", bool, False, doc="stop the run at the first corrupt packet"),
    )
    inputs = (Stream("in", None, doc="plaintext fronthaul packets"),)

    def start(self) -> None:
        self.pattern: PacketPattern | None = None
        self.next_seq = 0
        self.lat: list[np.ndarray] = []
        self.n_lat = 0
        self.max_seq = -1
        self.seen = 0
        for c in ("packets_ok", "packets_corrupt", "packets_out_of_order", "bytes_ok"):
            self.counters.setdefault(c, 0)

    def work(self, ins):
        now = time.monotonic_ns()
        f = ins["in"]
        try:
            pbytes = packet_bytes_of(f.data.dtype)
        except ValueError as e:
            raise BlockError(str(e)) from None
        n = len(f.data)
        if n == 0:
            return None
        meta = f.meta.get(META_KEY)
        if meta is None:
            raise BlockError(f"frame without '{META_KEY}' meta: connect a fronthaul_source upstream")
        if self.pattern is None or self.pattern.meta != meta:
            self.pattern = PacketPattern.from_meta(meta)
        if self.pattern.packet_bytes != pbytes:
            raise BlockError(f"packets of {pbytes} bytes but the source pattern says {self.pattern.packet_bytes}")
        seq = f.data["seq"]
        want = np.empty((n, pbytes), np.uint8)
        self.pattern.fill(seq, want)
        good = np.all(f.data["data"] == want, axis=1)
        n_ok = int(np.count_nonzero(good))
        self.count("packets_ok", n_ok)
        self.count("bytes_ok", n_ok * pbytes)
        if n_ok != n:
            self.count("packets_corrupt", n - n_ok)
            if self.fail_on_corrupt:
                raise BlockError(f"corrupt packet seq {int(seq[~good][0])}")
        # ordering: each packet should be one past the previous one
        s = seq.astype(np.int64)
        prev = np.concatenate(([self.next_seq - 1], s[:-1]))
        self.count("packets_out_of_order", int(np.count_nonzero(s <= prev)))
        self.max_seq = max(self.max_seq, int(s.max()))
        self.next_seq = int(s[-1]) + 1
        self.seen += n
        if self.n_lat < self.max_latency_samples:
            k = min(n, self.max_latency_samples - self.n_lat)
            self.lat.append((now - f.data["t_ns"][:k]).astype(np.int64))
            self.n_lat += k
        return None

    def report(self) -> dict:
        out: dict = {"packets_missing": max(self.max_seq + 1 - self.seen, 0)}
        if self.lat:
            lat_us = np.concatenate(self.lat) / 1e3
            out.update(latency_median_us=float(np.median(lat_us)), latency_p99_us=float(np.percentile(lat_us, 99)),
                       latency_max_us=float(lat_us.max()))
        return out
