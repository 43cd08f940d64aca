"""Cascade information reconciliation, vectorised, split into an Alice half (AAU) and a Bob half (DU).

Sources
-------
* G. Brassard, L. Salvail, "Secret-key reconciliation by public discussion", EUROCRYPT '93, LNCS 765:
  Cascade -- passes over shuffled blocks, BINARY search of every block of odd parity mismatch, and the
  cascade effect (a corrected bit re-opens the blocks of other passes containing it).
* W. T. Buttler et al., "Fast, efficient error reconciliation for quantum cryptography", PRA 67, 052303
  (2003): BICONF -- compare the parity of a random half of the key, bisect on mismatch, until a run of
  error-free rounds.
* H. Yan et al., "Information reconciliation protocol in quantum key distribution system", ICNC 2008.
* J. Martinez-Mateo, C. Pacher, M. Peev, A. Ciurana, V. Martin, "Demystifying the information
  reconciliation protocol Cascade", QIC 15 (2015), arXiv:1407.3257: the parameter sets used here
  (orig.: 4 passes, k1 = 0.73/Q, doubling; mod. (1): k1 = 0.92/Q, k2 = 3 k1 + BICONF, 10 error-free
  rounds; opt. (2) = Yan et al.: 10 passes, k1 = 0.8/Q, k2 = 5 k1, k_i = n/2; opt. (3): 16 passes,
  k1 = 1/Q, k2 = 2 k1, k_i = n/2; opt. (4) = (3) + reuse of sub-block parities disclosed by earlier
  binary searches), copied from /work/shared/reference/postprocessing.md Sec. 1.1, and the efficiency
  f = leak / (n h(Q)).

Protocol (exact, as implemented)
--------------------------------
Alice's key is the reference; Bob flips bits until his key agrees with hers. A *pass* p is either

* a permutation pass: the key is shuffled by a permutation ``order_p`` (``order_p[j]`` = key index at
  shuffled position j) and cut into consecutive blocks of ``k_p`` bits (the last block shorter), or
* a half-key pass, used for every pass after the first whose block size would leave <= 2 blocks (the
  ``k_i = n/2`` passes of opt. (2)-(4)) and for every BICONF round: a random subset S_p (each bit
  independently with probability 1/2) is block 0, its complement block 1; inside a block bits are in key
  order. (The literature splits into exactly n/2 + n/2 bits; a binomial-size random half is equivalent
  for i.i.d. errors and lets both sides work on 64-bit words.)

Inside a block of s bits a *node* is a rank interval of the implicit bisection tree: the root (heap
index 1) is [0, s); node h = [lo, hi) with hi - lo >= 2 has children 2h = [lo, mid) and 2h + 1 =
[mid, hi), mid = (lo + hi) // 2. Bob asks Alice for parities of whole blocks and of nodes, nothing else.

Schedule. Request 1 asks the block parities of *every* regular pass plus the first ``biconf_streak``
BICONF halves (Alice's parities never change, so asking them up front discloses exactly what the
sequential protocol discloses). Then, repeatedly: the permutation pass with the smallest block size that
has odd blocks is bisected -- all its odd blocks in lock-step, one round trip per tree level asking one
left-child parity per open search (the right child's parity is the parent's minus the left's). Odd
blocks of larger permutation passes join the batch when they share no bit with an already chosen block
(they then see exactly what they would see afterwards). Found errors are flipped together; each flip
toggles Bob's parity of the block containing it in every pass (the cascade effect, batched). Blocks of
different passes that overlap are never bisected together: two searches could end on the same error and
waste leak (measured f 1.046 -> 1.134 at n = 1e5, Q = 2 %). Once the permutation passes are clean, odd
half-key passes are bisected one at a time, lowest index first; whenever fewer than ``biconf_streak``
BICONF rounds follow the last one that found an error, the missing rounds are asked in one message.
Termination: every search ends on a genuine error, so at most (initial errors) flips happen; Bob raises
RuntimeError if replies ever imply more flips than key bits.

Leak. ``leak_bits`` is the number of parity bits in Alice's replies -- exactly what was disclosed.
Bob never asks what he can compute: the last block of every pass after the first follows from Alice's
total parity (XOR of her pass-0 block parities), so it is not asked (likewise BICONF's complement half,
which cascade-python asks and charges: 1 bit per round less here); with ``subblock_reuse`` a node
already disclosed in an earlier search is not asked again.

Shared randomness. Pass p uses ``numpy.random.Generator(PCG64(SeedSequence(entropy=seed,
spawn_key=(p,))))``: a permutation pass calls ``.permutation(N)`` once, N = 2^ceil(log2 n), and keeps the
entries < n in their order (the restriction of a uniform permutation of [0, N) is a uniform permutation of
[0, n)); a half-key pass calls ``.bytes(8 * ceil(n / 64))`` once (bit i of S_p = bit i % 64 of little-endian
64-bit word i // 64). Both halves derive identical passes from the shared public seed. The permutations of
[0, N) are cached per (seed, pass, N) (``_master_permutation``, a few entries): keys of any length up to N
reconciled with one seed share them, so a session that keeps its seed draws them once instead of per block
(drawing them was ~40 % of Cascade's time at n = 1e6, both halves). Every request carries ``config_tag`` =
CRC-32 of (n, seed, variant, block sizes), checked by Alice, so mismatched configurations fail loudly.

Alice is stateless: ``answer`` is a pure function of her key, configuration and the request (she only
memoises per-pass prefix parities, themselves pure functions of key and seed).

Wire format (little endian, CRC-32 of everything before it as the last 4 bytes; any truncation,
length mismatch, bad magic/version or CRC failure raises ValueError):
request  = "CQ" u8 version=2 u8 kind=0 u32 config_tag u32 seq u32 n_top u32 n_groups u32 n_nodes u8 bw u8 hw
           u16 top_pass[n_top] u32 top_count[n_top] u16 group_pass[n_groups] u32 group_count[n_groups]
           uBW node_block[n_nodes] uHW node_heap[n_nodes]  (groups partition the nodes, in order; bw, hw = 1, 2
           or 4 bytes, the narrowest that holds the largest: half the bytes of u32 for the usual node)
reply    = "CR" u8 version=2 u8 kind=1 u32 config_tag u32 seq u32 n_bits, parities packed LSB-first
           (padding bits zero), in request order: top-level blocks 0..count-1 per entry, then nodes.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Generator

import numpy as np

from qkdflow.distill.entropy import binary_entropy  # noqa: F401 (also re-exported)

__all__ = [
    "CascadeVariant",
    "VARIANTS",
    "ParityRequest",
    "ParityReply",
    "CascadeAlice",
    "CascadeBob",
    "CascadeResult",
    "reconcile",
    "binary_entropy",
    "block_sizes",
]

_MAX_KEY_BITS = 2**31 - 1  # node heap indices (< 2^(depth+1)) must fit in uint32
_MAX_PASSES = 65535  # pass indices travel as uint16
_SCALAR_SEARCHES = 6  # at most this many open binary searches: pure-Python path (numpy call overhead dominates)


# ----------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CascadeVariant:
    """A Cascade parameter set (Martinez-Mateo et al. 2015, Sec. 4; see module docstring).

    Block sizes: k1 = ceil(k1_factor / Q); k2 = round(k2_multiplier * k1); every later pass either
    multiplies the previous size by ``later`` (a number; 2.0 = Brassard-Salvail doubling) or uses n/2
    (``later="half_key"``, Yan et al.). ``biconf_streak`` > 0 appends BICONF rounds until that many
    consecutive rounds find no error (Buttler et al. 2003 use 10); with BICONF, geometric passes stop
    before the first one whose block would cover half the key (a BICONF round is exactly such a pass).
    ``subblock_reuse`` reuses every disclosed sub-block parity (opt. (4)).
    """

    name: str
    n_passes: int
    k1_factor: float
    k2_multiplier: float
    later: str | float = 2.0
    biconf_streak: int = 0
    subblock_reuse: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.n_passes <= 1000:
            raise ValueError(f"n_passes: must be in [1, 1000], got {self.n_passes}")
        if not self.k1_factor > 0:
            raise ValueError(f"k1_factor: must be > 0, got {self.k1_factor}")
        if not self.k2_multiplier >= 1:
            raise ValueError(f"k2_multiplier: must be >= 1, got {self.k2_multiplier}")
        if self.later != "half_key" and not (isinstance(self.later, (int, float)) and self.later >= 1):
            raise ValueError(f"later: must be 'half_key' or a multiplier >= 1, got {self.later!r}")
        if not 0 <= self.biconf_streak <= 1000:
            raise ValueError(f"biconf_streak: must be in [0, 1000], got {self.biconf_streak}")


VARIANTS: dict[str, CascadeVariant] = {
    # Brassard & Salvail 1993 as parametrised in Martinez-Mateo et al. 2015 ("Cascade orig.").
    "original": CascadeVariant("original", 4, 0.73, 2.0, 2.0),
    # Buttler et al. 2003, mod. (1) of Martinez-Mateo et al.: 2 passes + BICONF, streak 10.
    "biconf": CascadeVariant("biconf", 2, 0.92, 3.0, 2.0, biconf_streak=10),
    # Yan et al. 2008, opt. (2).
    "yanetal": CascadeVariant("yanetal", 10, 0.80, 5.0, "half_key"),
    # Martinez-Mateo et al. opt. (3) and opt. (4) (= (3) + sub-block reuse).
    "option3": CascadeVariant("option3", 16, 1.0, 2.0, "half_key"),
    "option4": CascadeVariant("option4", 16, 1.0, 2.0, "half_key", subblock_reuse=True),
    # This module's recommended set: Yan et al.'s first two block sizes (0.8/Q, 5 k1), then BICONF rounds
    # (Buttler et al.) in place of the fixed n/2 passes, plus opt. (4) sub-block reuse. Streak 14 instead
    # of 10: about 60 % of frames (n=1e4) still hold an even number of errors when BICONF starts and each
    # error-free round misses them with probability 1/2, so 2^-14 keeps FER well under 1e-3 for 4 bits.
    "hybrid": CascadeVariant("hybrid", 2, 0.80, 5.0, 2.0, biconf_streak=14, subblock_reuse=True),
}


def _resolve_variant(variant: str | CascadeVariant) -> CascadeVariant:
    if isinstance(variant, CascadeVariant):
        return variant
    if isinstance(variant, str) and variant in VARIANTS:
        return VARIANTS[variant]
    raise ValueError(f"variant: unknown {variant!r}; choose one of {sorted(VARIANTS)} or a CascadeVariant")


def block_sizes(variant: str | CascadeVariant, qber_estimate: float, n: int) -> list[int]:
    """Block size of every regular pass (bits), each capped at n (a block cannot exceed the key)."""
    v = _resolve_variant(variant)
    _check_qber(qber_estimate)
    k1 = max(2, math.ceil(v.k1_factor / qber_estimate))
    sizes = [k1]
    for i in range(1, v.n_passes):
        if i == 1:
            k = max(2, int(round(v.k2_multiplier * k1)))
        elif v.later == "half_key":
            k = max(2, n // 2)
        else:
            k = max(2, int(round(v.later * sizes[-1])))
        if v.biconf_streak and v.later != "half_key" and 2 * k >= n:
            break  # a half-key block is what BICONF rounds provide
        sizes.append(k)
    return [min(k, n) for k in sizes]


def _check_qber(q: float) -> None:
    if not (isinstance(q, (float, int, np.floating)) and 0.0 < float(q) < 0.5):
        raise ValueError(f"qber_estimate: must be a number in (0, 0.5), got {q!r}")


# ----------------------------------------------------------------------------------------------------
# Bit helpers
# ----------------------------------------------------------------------------------------------------
if hasattr(np, "bitwise_count"):

    def _popcount(x: np.ndarray) -> np.ndarray:
        return np.bitwise_count(x)

else:  # numpy < 2.0
    _POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

    def _popcount(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype="<u8")
        return _POP8[x.view(np.uint8)].reshape(x.shape + (8,)).sum(axis=-1, dtype=np.uint8)


def _pack_words(bits: np.ndarray, n_words: int) -> np.ndarray:
    """0/1 uint8 array -> little-endian uint64 words (bit i = bit i%64 of word i//64), zero padded."""
    packed = np.packbits(bits, bitorder="little")
    buf = np.zeros(n_words * 8, dtype=np.uint8)
    buf[: packed.size] = packed
    return buf.view("<u8").astype(np.uint64)


@functools.lru_cache(maxsize=64)
def _node_table(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of every heap index of the bisection tree of a block of ``size`` bits; lo == hi if invalid."""
    depth = max(1, math.ceil(math.log2(size))) if size > 1 else 1
    width = 2 ** (depth + 1)
    lo = np.zeros(width, dtype=np.int64)
    hi = np.zeros(width, dtype=np.int64)
    hi[1] = size
    for level in range(depth):
        h = np.arange(2**level, 2 ** (level + 1))
        split = hi[h] - lo[h] >= 2
        mid = (lo[h] + hi[h]) // 2
        lo[2 * h] = np.where(split, lo[h], 0)
        hi[2 * h] = np.where(split, mid, 0)
        lo[2 * h + 1] = np.where(split, mid, 0)
        hi[2 * h + 1] = np.where(split, hi[h], 0)
    lo.flags.writeable = False
    hi.flags.writeable = False
    return lo, hi


def _table_nodes(heaps: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised node lookup for blocks of one size: (lo, hi, valid)."""
    lo_t, hi_t = _node_table(size)
    h = heaps.astype(np.int64)
    inside = h < lo_t.size
    h = np.where(inside, h, 0)
    lo, hi = lo_t[h], hi_t[h]
    return lo, hi, inside & (hi > lo)


def _scalar_node(heap: int, size: int) -> tuple[int, int]:
    """Rank interval [lo, hi) of node ``heap`` in a block of ``size`` bits; (0, 0) if invalid."""
    if heap < 1:
        return 0, 0
    lo, hi = 0, size
    for level in range(heap.bit_length() - 2, -1, -1):
        if hi - lo < 2:
            return 0, 0
        mid = (lo + hi) // 2
        if (heap >> level) & 1:
            lo = mid
        else:
            hi = mid
    return lo, hi


class _MaskBlock:
    """Rank-parity oracle for one half-key block over a fixed key: P(r) = parity of its first r members."""

    __slots__ = ("members", "km", "cpar", "ranks", "size")

    def __init__(self, key_words: np.ndarray, member_words: np.ndarray) -> None:
        n_words = member_words.size
        self.members = member_words
        self.km = np.zeros(n_words + 1, dtype=np.uint64)  # extra zero word: P(size) needs no branch
        self.km[:n_words] = key_words[:n_words] & member_words
        self.cpar = np.zeros(n_words + 1, dtype=np.uint8)
        np.bitwise_xor.accumulate(_popcount(self.km[:n_words]) & 1, out=self.cpar[1:])
        self.ranks = np.zeros(n_words + 1, dtype=np.int64)
        np.cumsum(_popcount(member_words), out=self.ranks[1:])
        self.size = int(self.ranks[-1])

    def select(self, r: np.ndarray) -> np.ndarray:
        """Key index of the member of rank r (r == size -> 64 * n_words)."""
        r = np.asarray(r, dtype=np.int64)
        w = np.searchsorted(self.ranks, r, side="right") - 1
        out = w * 64
        inside = r < self.size
        if np.any(inside):
            wi = w[inside]
            t = r[inside] - self.ranks[wi]
            bits = np.unpackbits(self.members[wi].astype("<u8").view(np.uint8).reshape(-1, 8), axis=1,
                                 bitorder="little")
            pos = np.argmax(np.cumsum(bits, axis=1, dtype=np.int16) > t[:, None], axis=1)
            out[inside] = wi * 64 + pos
        return out

    def prefix_parity(self, r: np.ndarray) -> np.ndarray:
        a = self.select(r)
        w = a >> 6
        low = (np.uint64(1) << (a & 63).astype(np.uint64)) - np.uint64(1)
        return self.cpar[w] ^ (_popcount(self.km[w] & low) & 1).astype(np.uint8)

    def range_parity(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        if len(lo) <= 4:  # BICONF / half-key searches: one or two nodes per round; skip numpy overhead
            return np.array([self.prefix1(int(b)) ^ self.prefix1(int(a)) for a, b in zip(lo, hi)], dtype=np.uint8)
        return self.prefix_parity(hi) ^ self.prefix_parity(lo)

    def select1(self, r: int) -> int:
        if r >= self.size:
            return 64 * (self.ranks.size - 1)
        w = int(np.searchsorted(self.ranks, r, side="right")) - 1
        word = int(self.members[w])
        for _ in range(r - int(self.ranks[w])):
            word &= word - 1  # drop the lowest set bit
        return w * 64 + (word & -word).bit_length() - 1

    def prefix1(self, r: int) -> int:
        a = self.select1(r)
        w = a >> 6
        return int(self.cpar[w]) ^ ((int(self.km[w]) & ((1 << (a & 63)) - 1)).bit_count() & 1)


# ----------------------------------------------------------------------------------------------------
# The shared plan (pure function of n, seed, variant, qber_estimate)
# ----------------------------------------------------------------------------------------------------
def _pass_rng(seed: int, p: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy=seed, spawn_key=(p,))))


@functools.lru_cache(maxsize=8)
def _master_permutation(seed: int, p: int, size: int) -> np.ndarray:
    """Pass p's permutation of [0, size) (size a power of two), read-only; shared by every key of at most size
    bits reconciled with this seed. Eight entries: one session's permutation passes (2-4) at one or two sizes;
    4 MB each at size 2^20."""
    perm = _pass_rng(seed, p).permutation(size).astype(np.int32)
    perm.setflags(write=False)
    return perm


@functools.lru_cache(maxsize=4)
def _pass_order(seed: int, p: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Permutation pass p of an n-bit key: (order, position), read-only; ``order[j]`` = the key index at shuffled
    position j, ``position[i]`` = where key bit i sits (the inverse; its block is position // k). Neither depends
    on the block size k, which follows each block's QBER estimate, so a run's key blocks of one length (block_bits)
    share them."""
    master = _master_permutation(seed, p, 1 << (n - 1).bit_length())
    order = master[master < n] if master.size > n else master
    position = np.empty(n, dtype=np.int32)
    position[order] = np.arange(n, dtype=np.int32)
    order.setflags(write=False)
    position.setflags(write=False)
    return order, position


class _Plan:
    def __init__(self, n: int, seed: int, variant: str | CascadeVariant, qber_estimate: float) -> None:
        self.variant = _resolve_variant(variant)
        _check_qber(qber_estimate)
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
        self.n = n
        self.seed = int(seed)
        self.n_words = (n + 63) // 64
        self.block_sizes = block_sizes(self.variant, qber_estimate, n)
        self.n_regular = len(self.block_sizes)
        v = self.variant
        desc = (f"{n}|{self.seed}|{v.name}|{v.n_passes}|{v.k1_factor!r}|{v.k2_multiplier!r}|{v.later}|"
                f"{v.biconf_streak}|{int(v.subblock_reuse)}|{self.block_sizes}")
        self.config_tag = zlib.crc32(desc.encode())
        tail = n - (self.n_words - 1) * 64
        self.last_word_mask = np.uint64((1 << tail) - 1) if tail < 64 else np.uint64(2**64 - 1)

    def is_mask_pass(self, p: int) -> bool:
        if p >= self.n_regular:
            return True
        return p > 0 and -(-self.n // self.block_sizes[p]) <= 2

    def valid_pass(self, p: int) -> bool:
        return 0 <= p < self.n_regular or (self.variant.biconf_streak > 0 and self.n_regular <= p <= _MAX_PASSES)

    def rng(self, p: int) -> np.random.Generator:
        return _pass_rng(self.seed, p)

    def permutation(self, p: int) -> tuple[np.ndarray, int, int]:
        """(order padded to nb*k with sentinel n, k, nb)."""
        k = self.block_sizes[p]
        nb = -(-self.n // k)
        order = np.full(nb * k, self.n, dtype=np.int32)
        order[: self.n] = _pass_order(self.seed, p, self.n)[0]
        return order, k, nb

    def position(self, p: int) -> np.ndarray:
        """position[i] = where key bit i sits in pass p's order (read-only): its block is position // k."""
        return _pass_order(self.seed, p, self.n)[1]

    def mask(self, p: int) -> np.ndarray:
        words = np.frombuffer(self.rng(p).bytes(8 * self.n_words), dtype="<u8").astype(np.uint64)
        words[-1] &= self.last_word_mask
        return words

    def complement(self, mask_words: np.ndarray) -> np.ndarray:
        c = ~mask_words
        c[-1] &= self.last_word_mask
        return c


def _validate_key(key: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(key)
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be a 1-D array of bits, got shape {arr.shape}")
    if arr.size < 2 or arr.size > _MAX_KEY_BITS:
        raise ValueError(f"{name}: length must be in [2, {_MAX_KEY_BITS}], got {arr.size}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: must hold integers 0/1, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(f"{name}: values must be 0 or 1")
    return arr.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Messages
# ----------------------------------------------------------------------------------------------------
_REQ_HEAD = struct.Struct("<2sBBIIIIIBB")  # magic, version, kind, config_tag, seq, n_top, n_groups, n_nodes, bw, hw
_REP_HEAD = struct.Struct("<2sBBIII")  # magic, version, kind, config_tag, seq, n_bits
_CRC = struct.Struct("<I")
_VERSION = 2  # 2: node indices in the narrowest of 1, 2, 4 bytes


_EMPTY_U2 = np.zeros(0, dtype=np.uint16)
_EMPTY_U4 = np.zeros(0, dtype=np.uint32)
_EMPTY_U2.flags.writeable = False
_EMPTY_U4.flags.writeable = False


def _width(a: np.ndarray, name: str) -> int:
    """Bytes per entry for ``a`` on the wire: the narrowest of 1, 2, 4 that holds its largest value."""
    top = int(np.max(a)) if np.size(a) else 0
    if top < 0 or top >= 1 << 32:
        raise ValueError(f"{name}: must be a 1-D array of values fitting <u4")
    return 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4


def _u(a: np.ndarray, dtype: str, name: str) -> bytes:
    a = np.asarray(a)
    if a.dtype == dtype and a.ndim == 1:
        return a.tobytes()
    if a.ndim != 1 or (a.size and (a.min() < 0 or a.max() >= 2 ** (8 * int(dtype[-1])))):
        raise ValueError(f"{name}: must be a 1-D array of values fitting {dtype}")
    return a.astype(dtype, copy=False).tobytes()


@dataclass(eq=False)
class ParityRequest:
    """Bob -> Alice: which parities to disclose.

    ``top_passes[i], top_counts[i]``: parities of blocks 0 .. top_counts[i]-1 of that pass.
    ``group_passes[g], group_counts[g]``: the next group_counts[g] entries of ``node_blocks``/``node_heaps``
    name bisection-tree nodes (block index, heap index) of that pass. Reply bits follow this order.
    """

    config_tag: int
    seq: int
    top_passes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))
    top_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    group_passes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))
    group_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    node_blocks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    node_heaps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))

    @property
    def n_bits(self) -> int:
        """Number of parity bits this request asks Alice to disclose."""
        return sum(self.top_counts.tolist()) + int(self.node_blocks.size)

    def to_bytes(self) -> bytes:
        if not (self.top_passes.size == self.top_counts.size and self.group_passes.size == self.group_counts.size
                and self.node_blocks.size == self.node_heaps.size):
            raise ValueError("ParityRequest: paired arrays differ in length")
        bw, hw = _width(self.node_blocks, "node_blocks"), _width(self.node_heaps, "node_heaps")
        head = _REQ_HEAD.pack(b"CQ", _VERSION, 0, self.config_tag & 0xFFFFFFFF, self.seq & 0xFFFFFFFF,
                              self.top_passes.size, self.group_passes.size, self.node_blocks.size, bw, hw)
        body = b"".join(_u(a, dt, name) for a, dt, name in (
            (self.top_passes, "<u2", "top_passes"), (self.top_counts, "<u4", "top_counts"),
            (self.group_passes, "<u2", "group_passes"), (self.group_counts, "<u4", "group_counts"),
            (self.node_blocks, f"<u{bw}", "node_blocks"), (self.node_heaps, f"<u{hw}", "node_heaps")))
        msg = head + body
        return msg + _CRC.pack(zlib.crc32(msg))

    @classmethod
    def from_bytes(cls, data: bytes) -> "ParityRequest":
        data = _check_frame(data, _REQ_HEAD.size, "ParityRequest")
        magic, ver, kind, tag, seq, n_top, n_groups, n_nodes, bw, hw = _REQ_HEAD.unpack_from(data)
        if magic != b"CQ" or kind != 0:
            raise ValueError("ParityRequest: bad magic/kind")
        if ver != _VERSION:
            raise ValueError(f"ParityRequest: unsupported version {ver}")
        if bw not in (1, 2, 4) or hw not in (1, 2, 4):
            raise ValueError(f"ParityRequest: node index widths {bw}, {hw} (1, 2 or 4 bytes)")
        expect = _REQ_HEAD.size + 6 * n_top + 6 * n_groups + (bw + hw) * n_nodes + _CRC.size
        if len(data) != expect:
            raise ValueError(f"ParityRequest: length {len(data)} does not match header ({expect})")
        off = _REQ_HEAD.size
        arrays = []
        for count, dt, width, out in ((n_top, "<u2", 2, "u2"), (n_top, "<u4", 4, "u4"), (n_groups, "<u2", 2, "u2"),
                                      (n_groups, "<u4", 4, "u4"), (n_nodes, f"<u{bw}", bw, "u4"),
                                      (n_nodes, f"<u{hw}", hw, "u4")):
            if count:
                arrays.append(np.frombuffer(data, dtype=dt, count=count, offset=off).astype(out))
            else:
                arrays.append(_EMPTY_U2 if out == "u2" else _EMPTY_U4)
            off += count * width
        req = cls(tag, seq, *arrays)
        if sum(req.group_counts.tolist()) != n_nodes:
            raise ValueError("ParityRequest: group counts do not add up to the node count")
        return req


@dataclass(eq=False)
class ParityReply:
    """Alice -> Bob: the requested parity bits (``bits``: uint8 0/1, bit-packed on the wire)."""

    config_tag: int
    seq: int
    bits: np.ndarray

    def to_bytes(self) -> bytes:
        b = np.asarray(self.bits, dtype=np.uint8)
        head = _REP_HEAD.pack(b"CR", _VERSION, 1, self.config_tag & 0xFFFFFFFF, self.seq & 0xFFFFFFFF, b.size)
        msg = head + np.packbits(b, bitorder="little").tobytes()
        return msg + _CRC.pack(zlib.crc32(msg))

    @classmethod
    def from_bytes(cls, data: bytes) -> "ParityReply":
        data = _check_frame(data, _REP_HEAD.size, "ParityReply")
        magic, ver, kind, tag, seq, n_bits = _REP_HEAD.unpack_from(data)
        if magic != b"CR" or kind != 1:
            raise ValueError("ParityReply: bad magic/kind")
        if ver != _VERSION:
            raise ValueError(f"ParityReply: unsupported version {ver}")
        n_bytes = (n_bits + 7) // 8
        if len(data) != _REP_HEAD.size + n_bytes + _CRC.size:
            raise ValueError("ParityReply: length does not match header")
        packed = np.frombuffer(data, dtype=np.uint8, count=n_bytes, offset=_REP_HEAD.size)
        if n_bits % 8 and packed[-1] >> (n_bits % 8):
            raise ValueError("ParityReply: non-zero padding bits")
        return cls(tag, seq, np.unpackbits(packed, count=n_bits, bitorder="little"))


def _check_frame(data: bytes, head_size: int, name: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < head_size + _CRC.size:
        raise ValueError(f"{name}: truncated ({len(data)} bytes)")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise ValueError(f"{name}: CRC mismatch (truncated or corrupted)")
    return data


# ----------------------------------------------------------------------------------------------------
# Alice
# ----------------------------------------------------------------------------------------------------
class CascadeAlice:
    """Alice's half: answers parity requests from her (reference) key. Stateless apart from memoisation."""

    def __init__(self, key: np.ndarray, seed: int, variant: str | CascadeVariant, qber_estimate: float) -> None:
        self._key = _validate_key(key, "key")
        self._plan = _Plan(self._key.size, seed, variant, qber_estimate)
        self._words = _pack_words(self._key, self._plan.n_words)
        self._perm_cache: dict[int, tuple[np.ndarray, int, int, int]] = {}
        self._mask_cache: dict[int, tuple[_MaskBlock, _MaskBlock]] = {}
        self._total_parity = int(np.bitwise_xor.reduce(self._key))

    @property
    def config_tag(self) -> int:
        return self._plan.config_tag

    def _perm(self, p: int) -> tuple[np.ndarray, int, int, int]:
        if p not in self._perm_cache:
            order, k, nb = self._plan.permutation(p)
            ext = np.zeros(self._plan.n + 1, dtype=np.uint8)
            ext[:-1] = self._key
            cum = np.zeros(order.size + 1, dtype=np.uint8)
            np.bitwise_xor.accumulate(ext[order], out=cum[1:])
            last = self._plan.n - (nb - 1) * k
            self._perm_cache[p] = (cum, k, nb, last)
        return self._perm_cache[p]

    def _mask(self, p: int) -> tuple[_MaskBlock, _MaskBlock]:
        if p not in self._mask_cache:
            if len(self._mask_cache) >= 256:  # bound memory; evicted entries are recomputed on demand
                self._mask_cache.pop(next(iter(self._mask_cache)))
            m = self._plan.mask(p)
            self._mask_cache[p] = (_MaskBlock(self._words, m), _MaskBlock(self._words, self._plan.complement(m)))
        return self._mask_cache[p]

    def answer(self, request: ParityRequest) -> ParityReply:
        """Parities named by ``request``, in request order. Raises ValueError on an invalid request."""
        plan = self._plan
        if request.config_tag != plan.config_tag:
            raise ValueError("request.config_tag: does not match Alice's (n, seed, variant, qber) configuration")
        out: list[np.ndarray] = []
        for p, count in zip(request.top_passes.tolist(), request.top_counts.tolist()):
            if not plan.valid_pass(p):
                raise ValueError(f"request.top_passes: invalid pass {p}")
            if plan.is_mask_pass(p):
                if count > 2:
                    raise ValueError(f"request.top_counts: pass {p} has 2 blocks, asked {count}")
                # block 0 = S_p, block 1 = complement: parity of the key bits in / outside the mask
                par0 = int(np.bitwise_xor.reduce(_popcount(self._words & self._plan.mask(p)) & 1))
                out.append(np.array([par0, par0 ^ self._total_parity][:count], dtype=np.uint8))
            else:
                cum, k, nb, _ = self._perm(p)
                if count > nb:
                    raise ValueError(f"request.top_counts: pass {p} has {nb} blocks, asked {count}")
                edges = np.arange(count + 1) * k
                edges[-1] = min(edges[-1], cum.size - 1)
                out.append(cum[edges[1:]] ^ cum[edges[:-1]])
        start = 0
        for p, count in zip(request.group_passes.tolist(), request.group_counts.tolist()):
            if not plan.valid_pass(p):
                raise ValueError(f"request.group_passes: invalid pass {p}")
            blk = request.node_blocks[start:start + count].astype(np.int64)
            heap = request.node_heaps[start:start + count].astype(np.int64)
            start += count
            if plan.is_mask_pass(p):
                if np.any(blk > 1):
                    raise ValueError(f"request.node_blocks: pass {p} has 2 blocks")
                mb = self._mask(p)
                nodes = [_scalar_node(h, mb[b].size) for b, h in zip(blk.tolist(), heap.tolist())]
                lo = np.array([x[0] for x in nodes], dtype=np.int64)
                hi = np.array([x[1] for x in nodes], dtype=np.int64)
                if np.any(hi <= lo):
                    raise ValueError(f"request.node_heaps: invalid bisection node in pass {p}")
                par = np.zeros(count, dtype=np.uint8)
                for b in (0, 1):
                    sel = blk == b
                    if np.any(sel):
                        par[sel] = mb[b].range_parity(lo[sel], hi[sel])
                out.append(par)
            else:
                if count == 0:
                    continue
                cum, k, nb, last = self._perm(p)
                top_blk = int(blk.max())
                if top_blk >= nb:
                    raise ValueError(f"request.node_blocks: pass {p} has {nb} blocks")
                lo_t, hi_t = _node_table(k)
                if int(heap.max()) >= lo_t.size:
                    raise ValueError(f"request.node_heaps: invalid bisection node in pass {p}")
                lo, hi = lo_t[heap], hi_t[heap]
                if last != k and top_blk == nb - 1:  # the shorter last block has its own tree
                    tail = blk == nb - 1
                    lo[tail], hi[tail], ok = _table_nodes(heap[tail], last)
                    if not ok.all():
                        raise ValueError(f"request.node_heaps: invalid bisection node in pass {p}")
                if not (hi > lo).all():  # heap 0 and nodes below a leaf have lo == hi in the table
                    raise ValueError(f"request.node_heaps: invalid bisection node in pass {p}")
                base = blk * k
                out.append(cum[base + hi] ^ cum[base + lo])
        bits = out[0] if len(out) == 1 else (np.concatenate(out) if out else np.zeros(0, dtype=np.uint8))
        return ParityReply(plan.config_tag, request.seq, bits.astype(np.uint8, copy=False))


# ----------------------------------------------------------------------------------------------------
# Bob
# ----------------------------------------------------------------------------------------------------
class _PermPass:
    __slots__ = ("order", "k", "nb", "last", "position", "alice", "bob", "known")

    def __init__(self, order: np.ndarray, k: int, nb: int, n: int, reuse: bool, position: np.ndarray) -> None:
        self.order, self.k, self.nb = order, k, nb
        self.last = n - (nb - 1) * k
        self.position = position
        self.alice = np.zeros(nb, dtype=np.uint8)
        self.bob = np.zeros(nb, dtype=np.uint8)
        # Disclosed node parities (Alice's), heap-indexed per block; -1 = unknown. Only kept with reuse.
        depth = max(1, math.ceil(math.log2(k))) if k > 1 else 1
        self.known = np.full((nb, 2 ** (depth + 1)), -1, dtype=np.int8) if reuse else None


class _MaskPass:
    __slots__ = ("words", "alice", "bob")

    def __init__(self, words: np.ndarray) -> None:
        self.words = words
        self.alice = np.zeros(2, dtype=np.uint8)
        self.bob = np.zeros(2, dtype=np.uint8)


class CascadeBob:
    """Bob's half: drives the protocol and corrects his key towards Alice's.

    Loop: ``req = bob.next_request()`` (None when finished) -> send -> ``bob.receive(alice_reply)``.
    Attributes: ``corrected_key``, ``leak_bits`` (parity bits disclosed so far), ``messages`` (requests
    + replies), ``rounds`` (round trips).
    """

    def __init__(self, key: np.ndarray, seed: int, variant: str | CascadeVariant, qber_estimate: float) -> None:
        key = _validate_key(key, "key")
        self._plan = _Plan(key.size, seed, variant, qber_estimate)
        self._n = key.size
        self._key = np.zeros(self._n + 1, dtype=np.uint8)  # sentinel 0 at index n pads permuted blocks
        self._key[:-1] = key
        self._words = _pack_words(key, self._plan.n_words)
        self._passes: list[_PermPass | _MaskPass] = []
        self._mask_ids: list[int] = []
        self._mask_stack = np.zeros((0, self._plan.n_words), dtype=np.uint64)
        self._alice_total = 0
        self.leak_bits = 0
        self.rounds = 0
        self.messages = 0
        self.errors_corrected = 0
        self._seq = 0
        self._pending: ParityRequest | None = None
        self._reply_bits: np.ndarray | None = None
        self._gen = self._protocol()
        self._started = False
        self._done = False

    @property
    def corrected_key(self) -> np.ndarray:
        """Bob's current key (read-only view; final once ``next_request`` has returned None)."""
        view = self._key[:-1].view()
        view.flags.writeable = False
        return view

    @property
    def done(self) -> bool:
        return self._done

    # --- driving ------------------------------------------------------------------------------------
    def next_request(self) -> ParityRequest | None:
        """The next request to send to Alice, or None when reconciliation is complete."""
        if self._pending is not None:
            raise RuntimeError("next_request: the previous request has not been answered")
        if self._done:
            return None
        try:
            if self._started:
                req = self._gen.send(self._reply_bits)
            else:
                self._started = True
                req = next(self._gen)
        except StopIteration:
            self._done = True
            return None
        self._pending = req
        self.messages += 1
        return req

    def receive(self, reply: ParityReply) -> None:
        """Accept Alice's reply to the pending request (ValueError if it does not match it)."""
        req = self._pending
        if req is None:
            raise RuntimeError("receive: no request is pending")
        if reply.config_tag != self._plan.config_tag:
            raise ValueError("reply.config_tag: does not match Bob's configuration")
        if reply.seq != req.seq:
            raise ValueError(f"reply.seq: expected {req.seq}, got {reply.seq}")
        bits = np.asarray(reply.bits, dtype=np.uint8)
        if bits.ndim != 1 or bits.size != req.n_bits:
            raise ValueError(f"reply.bits: expected {req.n_bits} parity bits, got {bits.size}")
        if bits.size and bits.max() > 1:
            raise ValueError("reply.bits: values must be 0 or 1")
        self._pending = None
        self._reply_bits = bits
        self.leak_bits += bits.size
        self.rounds += 1
        self.messages += 1

    # --- protocol -----------------------------------------------------------------------------------
    def _request(self, top: list[tuple[int, int]] = (), groups: list[tuple[int, np.ndarray, np.ndarray]] = ()
                 ) -> ParityRequest:
        self._seq += 1
        if not top and len(groups) == 1:
            p, blk, heap = groups[0]
            return ParityRequest(self._plan.config_tag, self._seq, _EMPTY_U2, _EMPTY_U4,
                                 np.array([p], dtype=np.uint16), np.array([blk.size], dtype=np.uint32),
                                 blk.astype(np.uint32), heap.astype(np.uint32))
        tp = np.array([t[0] for t in top], dtype=np.uint16)
        tc = np.array([t[1] for t in top], dtype=np.uint32)
        gp = np.array([g[0] for g in groups], dtype=np.uint16)
        gc = np.array([g[1].size for g in groups], dtype=np.uint32)
        nb = np.concatenate([g[1] for g in groups]).astype(np.uint32) if groups else np.zeros(0, np.uint32)
        nh = np.concatenate([g[2] for g in groups]).astype(np.uint32) if groups else np.zeros(0, np.uint32)
        return ParityRequest(self._plan.config_tag, self._seq, tp, tc, gp, gc, nb, nh)

    def _open_pass(self, p: int) -> None:
        plan = self._plan
        if plan.is_mask_pass(p):
            mp = _MaskPass(plan.mask(p))
            b0 = int(np.bitwise_xor.reduce(_popcount(self._words & mp.words) & 1))
            total = int(np.bitwise_xor.reduce(_popcount(self._words) & 1))
            mp.bob[:] = (b0, b0 ^ total)
            self._passes.append(mp)
            self._mask_ids.append(p)
            if len(self._mask_ids) > self._mask_stack.shape[0]:  # grow by doubling: amortised O(1)
                grown = np.zeros((2 * len(self._mask_ids), self._plan.n_words), dtype=np.uint64)
                grown[: len(self._mask_ids) - 1] = self._mask_stack[: len(self._mask_ids) - 1]
                self._mask_stack = grown
            self._mask_stack[len(self._mask_ids) - 1] = mp.words
        else:
            order, k, nb = plan.permutation(p)
            pp = _PermPass(order, k, nb, self._n, plan.variant.subblock_reuse, plan.position(p))
            pp.bob[:] = np.bitwise_xor.reduce(self._key[order].reshape(nb, k), axis=1)
            self._passes.append(pp)

    def _top_count(self, p: int) -> int:
        ps = self._passes[p]
        nb = 2 if isinstance(ps, _MaskPass) else ps.nb
        return nb if p == 0 else nb - 1  # last block: total parity minus the others

    def _store_top(self, p: int, bits: np.ndarray) -> None:
        ps = self._passes[p]
        if p == 0:
            ps.alice[:] = bits
            self._alice_total = int(np.bitwise_xor.reduce(bits))
        else:
            ps.alice[: bits.size] = bits
            ps.alice[-1] = self._alice_total ^ int(np.bitwise_xor.reduce(bits))

    def _ask_top(self, passes: list[int]) -> Generator[ParityRequest, np.ndarray, None]:
        counts = [self._top_count(p) for p in passes]
        bits = yield self._request(top=list(zip(passes, counts)))
        off = 0
        for p, c in zip(passes, counts):
            self._store_top(p, bits[off:off + c])
            off += c

    def _protocol(self) -> Generator[ParityRequest, np.ndarray, None]:
        plan = self._plan
        streak = plan.variant.biconf_streak
        first = list(range(plan.n_regular + streak))
        for p in first:
            self._open_pass(p)
        yield from self._ask_top(first)
        last_biconf_error = -1
        while True:
            todo = self._odd_passes()
            if not todo:
                if streak:
                    needed = plan.n_regular + last_biconf_error + 1 + streak
                    have = len(self._passes)
                    if have < needed:
                        if needed > _MAX_PASSES:
                            raise RuntimeError("BICONF did not converge within the pass-index range")
                        new = list(range(have, needed))
                        for q in new:
                            self._open_pass(q)
                        yield from self._ask_top(new)
                        continue
                return
            flips = yield from self._lockstep([self._bisect_pass(p, blocks) for p, blocks in todo])
            for p, _ in todo:
                if p >= plan.n_regular:
                    last_biconf_error = max(last_biconf_error, p - plan.n_regular)
            self._apply_flips(flips)

    def _lockstep(self, gens: list) -> Generator[ParityRequest, np.ndarray, np.ndarray]:
        """Run several bisection generators together: one merged request per round trip."""
        if len(gens) == 1:
            gen = gens[0]
            try:
                groups = next(gen)
                while True:
                    groups = gen.send((yield self._request(groups=groups)))
            except StopIteration as stop:
                return stop.value
        results: list[np.ndarray] = []
        pending: list[tuple] = []  # (generator, groups)
        for g in gens:
            try:
                pending.append((g, next(g)))
            except StopIteration as stop:
                results.append(stop.value)
        while pending:
            groups = [grp for _, gs in pending for grp in gs]
            bits = yield self._request(groups=groups)
            off = 0
            nxt = []
            for g, gs in pending:
                cnt = sum(grp[1].size for grp in gs)
                try:
                    nxt.append((g, g.send(bits[off:off + cnt])))
                except StopIteration as stop:
                    results.append(stop.value)
                off += cnt
            pending = nxt
        return np.concatenate(results) if results else np.zeros(0, dtype=np.int64)

    def _odd_passes(self) -> list[tuple[int, np.ndarray | None]]:
        """What to bisect in the next lock-step batch, as (pass, odd blocks or None = all odd blocks).

        Cascade's order is shortest block first: the permutation pass with the smallest block size
        that has odd blocks goes first, with all its (disjoint) odd blocks. Odd blocks of the larger
        permutation passes join the batch only if they share no bit with a block already chosen: their
        searches then see exactly the bits and disclosed parities they would see if run afterwards,
        and cannot end on an error another search is finding. (Bisecting *overlapping* blocks together
        would cost leak: measured f 1.046 -> 1.134 at n=1e5, Q=2 %.) Half-key/BICONF passes overlap
        everything, so they run alone, lowest index first, once the permutation passes are clean.
        """
        perm = sorted((ps.k, p) for p, ps in enumerate(self._passes) if isinstance(ps, _PermPass))
        cand = [(p, odd) for _, p in perm
                if (odd := np.flatnonzero(self._passes[p].alice != self._passes[p].bob)).size]
        if len(cand) > 1:
            taken = np.zeros(self._n + 1, dtype=bool)
            batch = []
            for p, odd in cand:
                ps = self._passes[p]
                members = ps.order.reshape(ps.nb, ps.k)[odd]
                if batch:
                    free = ~taken[members].any(axis=1)
                    if not free.any():
                        continue
                    odd, members = odd[free], members[free]
                batch.append((p, odd))
                taken[members] = True
                taken[self._n] = False  # the sentinel padding every last block is not a key bit
            return batch
        if cand:
            return cand
        if self._mask_ids:
            alice = np.array([self._passes[p].alice for p in self._mask_ids])
            bob = np.array([self._passes[p].bob for p in self._mask_ids])
            odd = np.flatnonzero((alice != bob).any(axis=1))
            if odd.size:
                return [(self._mask_ids[int(odd[0])], None)]
        return []

    def _bisect_pass(self, p: int, blocks: np.ndarray | None = None) -> Generator[list, np.ndarray, np.ndarray]:
        """Binary-search every odd block of pass p in lock-step; return the key indices found in error.

        Yields one list of node groups per round trip and receives Alice's parities of those nodes.
        """
        ps = self._passes[p]
        if isinstance(ps, _MaskPass):
            return (yield from self._bisect_mask(p, ps))
        if blocks is None:
            blocks = np.flatnonzero(ps.alice != ps.bob)
        m = blocks.size
        k1 = ps.k + 1
        # Bob's prefix parities of every odd block (his key is frozen until the batch ends).
        cum = np.zeros((m, k1), dtype=np.uint8)
        np.bitwise_xor.accumulate(self._key[ps.order.reshape(ps.nb, ps.k)[blocks]], axis=1, out=cum[:, 1:])
        cum = cum.ravel()
        base = np.arange(m, dtype=np.int64) * k1
        blk = blocks.astype(np.int64)
        lo = np.zeros(m, dtype=np.int64)
        hi = np.where(blocks == ps.nb - 1, ps.last, ps.k).astype(np.int64)
        heap = np.ones(m, dtype=np.int64)
        apar = ps.alice[blocks]  # Alice's parity of each search's current node
        known = None if ps.known is None else ps.known.ravel()
        width = 0 if ps.known is None else ps.known.shape[1]
        found_blk: list[np.ndarray] = []
        found_rank: list[np.ndarray] = []
        while True:
            while True:
                leaf = hi - lo == 1
                if leaf.any():
                    found_blk.append(blk[leaf])
                    found_rank.append(lo[leaf])
                    keep = ~leaf
                    blk, lo, hi, heap, apar, base = blk[keep], lo[keep], hi[keep], heap[keep], apar[keep], base[keep]
                if known is None or blk.size == 0:
                    break
                # Sub-block reuse: descend for free wherever the left child's parity is already known.
                k_left = known[blk * width + 2 * heap]
                free = k_left >= 0
                if not free.any():
                    break
                mid = (lo + hi) // 2
                a_left = k_left.astype(np.uint8)
                go_left = a_left != (cum[base + mid] ^ cum[base + lo])
                heap = np.where(free, 2 * heap + ~go_left, heap)
                hi = np.where(free & go_left, mid, hi)
                lo = np.where(free & ~go_left, mid, lo)
                apar = np.where(free, np.where(go_left, a_left, apar ^ a_left), apar)
            if blk.size == 0:
                break
            if blk.size <= _SCALAR_SEARCHES:  # the long tail of small batches: plain ints beat numpy calls
                fb, fr = yield from self._bisect_scalar(p, cum, known, width, blk, lo, hi, heap, apar, base)
                found_blk.append(fb)
                found_rank.append(fr)
                break
            left = 2 * heap
            bits = yield [(p, blk, left)]
            if known is not None:  # only left children are ever looked up (right = parent ^ left)
                known[blk * width + left] = bits
            mid = (lo + hi) // 2
            go_left = bits != (cum[base + mid] ^ cum[base + lo])
            heap = left + ~go_left
            hi = np.where(go_left, mid, hi)
            lo = np.where(go_left, lo, mid)
            apar = np.where(go_left, bits, apar ^ bits)
        if not found_blk:
            return np.zeros(0, dtype=np.int64)
        return ps.order[np.concatenate(found_blk) * ps.k + np.concatenate(found_rank)].astype(np.int64)

    @staticmethod
    def _bisect_scalar(p: int, cum: np.ndarray, known: np.ndarray | None, width: int, *state: np.ndarray
                       ) -> Generator[list, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Scalar continuation of ``_bisect_pass`` for a few open searches (same decisions, same asks)."""
        cb = cum.tobytes()  # bytes indexing yields Python ints
        searches = [list(t) for t in zip(*(a.tolist() for a in state))]  # [blk, lo, hi, heap, apar, base]
        found_blk: list[int] = []
        found_rank: list[int] = []
        while True:
            still = []
            for s in searches:
                b, lo, hi, heap, apar, base = s
                while hi - lo > 1 and known is not None:  # free descent through disclosed left children
                    k_left = int(known[b * width + 2 * heap])
                    if k_left < 0:
                        break
                    mid = (lo + hi) // 2
                    if k_left != cb[base + mid] ^ cb[base + lo]:
                        hi, heap, apar = mid, 2 * heap, k_left
                    else:
                        lo, heap, apar = mid, 2 * heap + 1, apar ^ k_left
                if hi - lo == 1:
                    found_blk.append(b)
                    found_rank.append(lo)
                else:
                    still.append([b, lo, hi, heap, apar, base])
            searches = still
            if not searches:
                return np.array(found_blk, dtype=np.int64), np.array(found_rank, dtype=np.int64)
            bits = yield [(p, np.array([s[0] for s in searches], dtype=np.int64),
                           np.array([2 * s[3] for s in searches], dtype=np.int64))]
            for s, a_left in zip(searches, bits.tolist()):
                b, lo, hi, heap, apar, base = s
                if known is not None:
                    known[b * width + 2 * heap] = a_left
                mid = (lo + hi) // 2
                if a_left != cb[base + mid] ^ cb[base + lo]:
                    s[1:5] = [lo, mid, 2 * heap, a_left]
                else:
                    s[1:5] = [mid, hi, 2 * heap + 1, apar ^ a_left]

    def _bisect_mask(self, p: int, ps: _MaskPass) -> Generator[list, np.ndarray, np.ndarray]:
        """Half-key / BICONF pass: at most two (disjoint) odd blocks, searched with scalar arithmetic."""
        mb = (_MaskBlock(self._words, ps.words), _MaskBlock(self._words, self._plan.complement(ps.words)))
        searches = [[b, 1, 0, mb[b].size, int(ps.alice[b])] for b in (0, 1) if ps.alice[b] != ps.bob[b]]
        found = [mb[s[0]].select1(0) for s in searches if s[3] == 1]  # a 1-bit odd block is the error
        searches = [s for s in searches if s[3] > 1]
        while searches:
            bits = yield [(p, np.array([s[0] for s in searches], dtype=np.int64),
                           np.array([2 * s[1] for s in searches], dtype=np.int64))]
            nxt = []
            for s, a_left in zip(searches, bits.tolist()):
                b, heap, lo, hi, apar = s
                mid = (lo + hi) // 2
                if a_left != mb[b].prefix1(mid) ^ mb[b].prefix1(lo):
                    s[1:] = [2 * heap, lo, mid, a_left]
                else:
                    s[1:] = [2 * heap + 1, mid, hi, apar ^ a_left]
                if s[3] - s[2] == 1:
                    found.append(mb[s[0]].select1(s[2]))
                else:
                    nxt.append(s)
            searches = nxt
        return np.array(found, dtype=np.int64)

    def _apply_flips(self, flips: np.ndarray) -> None:
        # Flips are distinct: searches of one batch run in pairwise disjoint blocks.
        self.errors_corrected += flips.size
        if self.errors_corrected > self._n:
            # Every search ends on a genuine error, so an honest Alice allows at most n flips.
            raise RuntimeError("Cascade: more flips than key bits -- replies inconsistent with one key")
        self._key[flips] ^= 1
        np.bitwise_xor.at(self._words, flips >> 6, np.left_shift(np.uint64(1), (flips & 63).astype(np.uint64)))
        for ps in self._passes:
            if isinstance(ps, _PermPass):
                ps.bob ^= (np.bincount(ps.position[flips] // ps.k, minlength=ps.nb) & 1).astype(np.uint8)
        if self._mask_ids:
            w = self._mask_stack[: len(self._mask_ids), flips >> 6] >> (flips & 63).astype(np.uint64)
            ones = np.sum(w & np.uint64(1), axis=1, dtype=np.int64)
            for j, p in enumerate(self._mask_ids):
                ps = self._passes[p]
                ps.bob[0] ^= ones[j] & 1
                ps.bob[1] ^= (flips.size - ones[j]) & 1


# ----------------------------------------------------------------------------------------------------
# In-process convenience
# ----------------------------------------------------------------------------------------------------
@dataclass
class CascadeResult:
    """Outcome of one frame. ``efficiency`` = leak / (n h(e/n)) with e the frame's actual error count."""

    corrected_key: np.ndarray
    leak_bits: int
    rounds: int
    messages: int
    n: int
    errors_before: int
    residual_errors: int
    request_bytes: int
    reply_bytes: int

    @property
    def frame_error(self) -> bool:
        return self.residual_errors > 0

    @property
    def efficiency(self) -> float:
        if self.errors_before == 0:
            return math.inf if self.leak_bits else math.nan
        return self.leak_bits / (self.n * binary_entropy(self.errors_before / self.n))


def reconcile(alice_key: np.ndarray, bob_key: np.ndarray, qber_estimate: float,
              variant: str | CascadeVariant = "hybrid", seed: int = 0, wire: bool = True) -> CascadeResult:
    """Run both halves in one process. With ``wire`` every message goes through to_bytes/from_bytes."""
    alice = CascadeAlice(alice_key, seed, variant, qber_estimate)
    bob = CascadeBob(bob_key, seed, variant, qber_estimate)
    a = alice._key
    if a.size != bob.corrected_key.size:
        raise ValueError(f"bob_key: length {bob.corrected_key.size} differs from alice_key length {a.size}")
    errors_before = int(np.count_nonzero(a != bob.corrected_key))
    req_bytes = rep_bytes = 0
    while (req := bob.next_request()) is not None:
        if wire:
            raw = req.to_bytes()
            req_bytes += len(raw)
            rep_raw = alice.answer(ParityRequest.from_bytes(raw)).to_bytes()
            rep_bytes += len(rep_raw)
            bob.receive(ParityReply.from_bytes(rep_raw))
        else:
            bob.receive(alice.answer(req))
    key = bob.corrected_key.copy()
    return CascadeResult(key, bob.leak_bits, bob.rounds, bob.messages, a.size, errors_before,
                         int(np.count_nonzero(key != a)), req_bytes, rep_bytes)
