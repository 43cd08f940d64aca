#!/usr/bin/env python3
"""Lab-style acquisition script: publish time-tag batches over ZeroMQ for ``tag_stream_source``.

Reads a recording (PTU / raw / Swabian Dump / CSV, via ``qkdflow.timetag``) — standing in for a time tagger's stream
API such as Swabian ``TimeTagStream.getData()`` — and sends it in batches in the wire format of
``blocks/tag_stream_source.py``, then an end marker. ``--speed`` paces batches to the tags' own time (1 = real time,
0 = as fast as the receiver takes them). PUB is opened as XPUB with XPUB_NODROP, and the script waits for the first
subscription before sending, so nothing is lost to ZeroMQ's slow-joiner effect or the high-water mark.

    python tools/tag_publisher.py recording.ptu --address tcp://127.0.0.1:5560 [--batch-tags 65536] [--speed 0]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from blocks.tag_stream_source import encode_batch  # noqa: E402
from qkdflow.timetag import FORMATS, TimeTagError, open_tag_reader  # noqa: E402


def _batches(path: str, fmt: str | None, batch_tags: int):
    """Re-chunk the reader's output into batches of ``batch_tags`` (the last may be shorter)."""
    buf: list[np.ndarray] = []
    have = 0
    for chunk in open_tag_reader(path, fmt, chunk_records=max(batch_tags, 1)):
        buf.append(chunk)
        have += chunk.size
        while have >= batch_tags:
            allt = np.concatenate(buf)
            yield allt[:batch_tags]
            rest = allt[batch_tags:]
            buf, have = ([rest] if rest.size else []), rest.size
    if have:
        yield np.concatenate(buf)


def publish(path: str, address: str, fmt: str | None = None, batch_tags: int = 65536, speed: float = 0.0,
            pattern: str = "pub", topic: str = "tags", send_end: bool = True, wait_subscriber_s: float = 10.0,
            stop_after_batches: int | None = None, ctx: zmq.Context | None = None) -> int:
    """Publish ``path`` as tag batches; return the number of batches sent (the end marker not counted).

    ``stop_after_batches`` stops early without an end marker (to test stall handling).
    """
    if batch_tags < 1:
        raise ValueError(f"batch_tags: must be >= 1, got {batch_tags}")
    if speed < 0:
        raise ValueError(f"speed: must be >= 0, got {speed}")
    if pattern not in ("pub", "push"):
        raise ValueError(f"pattern: must be pub or push, got {pattern!r}")
    ctx = ctx or zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB if pattern == "pub" else zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    if pattern == "pub":
        sock.setsockopt(zmq.XPUB_NODROP, 1)   # block at the high-water mark instead of dropping
    sock.bind(address)
    t_topic = topic.encode()
    try:
        if pattern == "pub":   # the first subscription arrives as b"\x01" + topic
            if not sock.poll(int(wait_subscriber_s * 1000), zmq.POLLIN):
                raise TimeoutError(f"{address}: no subscriber within {wait_subscriber_s:g} s")
            sock.recv()
        seq = 0
        t0_wall = time.monotonic()
        t0_tag = None
        for batch in _batches(path, fmt, batch_tags):
            if stop_after_batches is not None and seq >= stop_after_batches:
                return seq
            if speed > 0 and batch.size:
                t0_tag = int(batch["time_ps"][0]) if t0_tag is None else t0_tag
                due = t0_wall + (int(batch["time_ps"][-1]) - t0_tag) * 1e-12 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sock.send_multipart(encode_batch(seq, batch, t_topic))
            seq += 1
        if send_end:
            sock.send_multipart(encode_batch(seq, None, t_topic))
        return seq
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("path", help="tag file")
    ap.add_argument("--address", default="tcp://127.0.0.1:5560", help="endpoint to bind")
    ap.add_argument("--format", choices=FORMATS, default=None, help="file format (default: detect)")
    ap.add_argument("--batch-tags", type=int, default=65536, help="tags per batch")
    ap.add_argument("--speed", type=float, default=0.0, help="pace to tag time x speed (0: no pacing)")
    ap.add_argument("--pattern", choices=("pub", "push"), default="pub")
    ap.add_argument("--topic", default="tags")
    ap.add_argument("--no-end", action="store_true", help="do not send the end marker")
    ap.add_argument("--wait-subscriber-s", type=float, default=30.0)
    a = ap.parse_args(argv)
    try:
        n = publish(a.path, a.address, a.format, a.batch_tags, a.speed, a.pattern, a.topic, not a.no_end,
                    a.wait_subscriber_s)
    except (TimeTagError, ValueError, TimeoutError, OSError) as e:
        print(f"tag_publisher: {e}", file=sys.stderr)
        return 2
    print(f"tag_publisher: sent {n} batches from {a.path} to {a.address}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
