#!/usr/bin/env python3
"""Make ZeroMQ CURVE certificates for the nodes of a flowgraph: DIR/<node>.key (public) and .key_secret.

    python tools/make_curve_keys.py keys/ aau du

Copy DIR to every host, then delete the other nodes' *.key_secret files from each host's copy; point the
flowgraph at it with `nodes: {aau: {curve_keys: keys/}, du: {curve_keys: keys/}}` (README, "Edges").
"""
import argparse
import os

import zmq.auth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("nodes", nargs="+")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    for n in a.nodes:
        pub, sec = zmq.auth.create_certificates(a.dir, n)
        print(f"wrote {pub} and {sec}")


if __name__ == "__main__":
    main()
