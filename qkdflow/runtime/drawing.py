"""Draw a flowgraph with matplotlib: one column per node (a shaded cluster), blocks in
topological order, stream edges solid, message edges dashed, inter-node edges labelled with
their endpoint."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .graph import Graph  # noqa: E402


def _depths(graph: Graph) -> dict[str, int]:
    depth = {b: 0 for b in graph.blocks}
    streams = [e for e in graph.edges if e.kind == "stream"]
    for _ in range(len(graph.blocks)):  # longest-path layering on the stream DAG
        changed = False
        for e in streams:
            if depth[e.dst] < depth[e.src] + 1:
                depth[e.dst] = depth[e.src] + 1
                changed = True
        if not changed:
            break
    return depth


def draw_graph(graph: Graph, path: str) -> None:
    depth = _depths(graph)
    nodes = list(graph.nodes)
    pos: dict[str, tuple[float, float]] = {}
    col_w = 4.0
    for ci, n in enumerate(nodes):
        members = sorted(graph.blocks_of(n), key=lambda b: (depth[b], b))
        for ri, b in enumerate(members):
            pos[b] = (ci * col_w + (ri % 2) * 1.2, -ri * 1.0)
    rows = max((len(graph.blocks_of(n)) for n in nodes), default=1)
    fig, ax = plt.subplots(figsize=(max(6, 3.6 * len(nodes)), max(3, 0.9 * rows + 1.5)))
    for ci, n in enumerate(nodes):
        ax.add_patch(plt.Rectangle((ci * col_w - 1.0, -rows + 0.3), col_w - 0.6, rows + 0.5,
                                   fc=f"C{ci}", alpha=0.08, ec=f"C{ci}"))
        ax.text(ci * col_w - 0.9, 0.55, f"node {n}", fontsize=10, weight="bold", color=f"C{ci}")
    for e in graph.edges:
        (x0, y0), (x1, y1) = pos[e.src], pos[e.dst]
        inter = graph.blocks[e.src].node != graph.blocks[e.dst].node
        ax.annotate("", xy=(x1, y1 + 0.15), xytext=(x0, y0 - 0.15),
                    arrowprops=dict(arrowstyle="->", ls="--" if e.kind == "message" else "-",
                                    color="crimson" if inter else "0.3", lw=1.2, connectionstyle="arc3,rad=0.1"))
        if inter:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, e.connect, fontsize=6, color="crimson", ha="center")
    for b, (x, y) in pos.items():
        ax.text(x, y, f"{b}\n({graph.blocks[b].type})", ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", fc="white", ec="0.4"))
    ax.set_xlim(-1.2, len(nodes) * col_w)
    ax.set_ylim(-rows, 1.0)
    ax.axis("off")
    ax.set_title(f"flowgraph {graph.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
