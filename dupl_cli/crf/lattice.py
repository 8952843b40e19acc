"""Permutohedral lattice (Adams et al. 2010) in batched torch: Gaussian filtering of per-point values.

Follows the conventions of Krähenbühl's dense CRF code that pydensecrf wraps, so the two agree to
rounding: the same elevation and scale factors, nearest remainder-0 point with ties to even (its SSE
build), the same simplex ranks and barycentric weights, blur weights (1/2, 1, 1/2) along the d+1
lattice directions in order 0..d, and the slice scale 1 / (1 + 2^-d). Its SSE build also inserts the
vertices of a zero feature vector when the point count is not a multiple of 4 (padding of the last
4-wide block); those vertices take part in the blur, so callers pass them as ``ghosts``.

Several images share one structure (the image index is part of every key), so a batch of images of
different sizes is filtered in one pass. A vertex key (image, remainder r, quotients q) is packed
into one int64; hashing is one sort, blur neighbours are key arithmetic plus a binary search. Splat
and slice are sparse CSR products (CPU) or sorted segment sums and gathers (CUDA): no float atomics,
so results are deterministic. Point data is coordinate-major (d×N) so every step reads contiguous rows.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from dupl_cli.core.errors import UserError

_PACK_LIMIT = 2**62


def _scale_factors(d: int) -> list[float]:
    # The C++ computes these in double from a float inv_std_dev and stores them as float.
    inv_std = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))
    return [float(np.float32(inv_std / math.sqrt((i + 2) * (i + 1)))) for i in range(d)]


def _elevate(features: torch.Tensor) -> torch.Tensor:
    """d×N features -> (d+1)×N points on the plane x·1 = 0, with the C++ order of float operations."""
    d, n = features.shape
    scale = _scale_factors(d)
    out = torch.empty(d + 1, n, device=features.device)
    sm = torch.zeros(n, device=features.device)
    for j in range(d, 0, -1):
        cf = features[j - 1] * scale[j - 1]
        out[j] = sm - float(j) * cf
        sm = sm + cf
    out[0] = sm
    return out


def _simplex(elevated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest remainder-0 point, rank of each coordinate and barycentric weights, all (d+1)×N."""
    d1, n = elevated.shape
    d = d1 - 1
    down = float(np.float32(1.0) / np.float32(d1))
    v = torch.round(elevated * down)  # ties to even, as the SSE conversion
    rem0 = v * float(d1)
    diff = elevated - rem0
    rank = v.sum(0).expand(d1, n).clone()  # starts at the plane offset, as the C++ adds it
    for i in range(d):
        for j in range(i + 1, d1):
            c = (diff[i] < diff[j]).to(torch.float32)
            rank[i] += c
            rank[j] += 1.0 - c
    shift = (rank < 0).to(torch.float32) * d1 - (rank >= d1).to(torch.float32) * d1
    rank, rem0 = (rank + shift).long(), rem0 + shift
    v = (elevated - rem0) * down
    bary = torch.zeros(d + 2, n, device=v.device).scatter_(0, d - rank, v)
    bary.scatter_add_(0, d + 1 - rank, -v)  # one entry per slot and column: no collisions
    bary[0] += 1.0 + bary[d + 1]
    return rem0, rank, bary[:d1]


class _Keys:
    """Mixed-radix int64 codes of vertex keys (image, q_0..q_{d-1}, r), q with a margin of one so the
    codes of blur neighbours stay in range."""

    def __init__(self, qbase: torch.Tensor, images: int) -> None:
        d = qbase.shape[0]
        lo = (qbase.amin(1) - 2).tolist()  # vertex q is qbase or qbase - 1; neighbours one further
        span = [int(h) - lo_ + 2 for h, lo_ in zip(qbase.amax(1).tolist(), lo, strict=True)]
        self.d, self.lo = d, lo
        # r is the least significant digit: vertices of neighbouring simplices get nearby ids
        self.r_stride, strides, stride = 1, [], d + 1
        for extent in reversed(span):
            strides.append(stride)
            stride *= extent
        self.q_strides = strides[::-1]
        self.image_stride = stride
        if self.image_stride * images >= _PACK_LIMIT:
            raise UserError(
                "dense CRF: lattice keys too spread out to hash (crf sxy or srgb too small for the image "
                'size); raise them or set crf.backend = "pydensecrf"'
            )

    def vertex_codes(self, qbase, rank, owner) -> torch.Tensor:
        """N×(d+1) codes of the d+1 vertices (remainder r = 0..d) of each point's simplex.

        Vertex r's stored coordinates are rem0 + r, or rem0 + r - (d+1) where rank > d - r, so its
        quotients are qbase or qbase - 1."""
        d, d1 = self.d, self.d + 1
        base = owner * self.image_stride
        for i in range(d):
            base = base + (qbase[i] - self.lo[i]) * self.q_strides[i]
        r = torch.arange(d1, device=rank.device)
        codes = base[:, None] + r * self.r_stride
        for i in range(d):
            codes -= (r[None, :] > (d - rank[i])[:, None]) * self.q_strides[i]
        return codes

    def neighbours(self, codes: torch.Tensor) -> torch.Tensor:
        """(d+1)×2×M codes of the blur neighbours n1, n2 of vertices ``codes`` along each direction.

        In full coordinates n1 is key - 1 except key[j] + d (n2 the opposite), the last coordinate
        implied; in (r, q): n1 has r - 1 and q_j + 1, or, from r = 0, r = d and q_i - 1 for i != j."""
        d, rs = self.d, self.r_stride
        r = codes % (d + 1)
        total = sum(self.q_strides)
        out = []
        for j in range(d + 1):
            sj = self.q_strides[j] if j < d else 0
            n1 = torch.where(r >= 1, codes - rs + sj, codes + d * rs - (total - sj))
            n2 = torch.where(r <= d - 1, codes + rs - sj, codes - d * rs + (total - sj))
            out.append(torch.stack([n1, n2]))
        return torch.stack(out)


@dataclass
class Lattice:
    """Splat/blur/slice operators over the points of one or more images."""

    n: int
    m: int
    neighbours: torch.Tensor  # (d+1, 2, M+1) blur neighbours; index M is a zero row
    splat_csr: torch.Tensor | None  # (M, N) sparse CSR (CPU)
    slice_csr: torch.Tensor | None  # (N, M) sparse CSR with the slice scale (CPU)
    points: torch.Tensor | None  # (E,) point of each splat entry, sorted by vertex (CUDA)
    entry_weights: torch.Tensor | None  # (E, 1)
    lengths: torch.Tensor | None  # (M,) entries per vertex
    offsets: torch.Tensor | None  # (d+1, N) vertex of each simplex corner
    weights: torch.Tensor | None  # (d+1, N, 1) barycentric weights times the slice scale

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """N×K values -> N×K, the lattice's Gaussian filter (unnormalised, as Permutohedral::compute)."""
        if self.splat_csr is not None:
            lattice = self.splat_csr @ values
        else:
            contrib = values.index_select(0, self.points) * self.entry_weights
            lattice = torch.segment_reduce(contrib, "sum", lengths=self.lengths, axis=0, unsafe=True)
        lattice = torch.cat([lattice, lattice.new_zeros(1, values.shape[1])])
        pair = torch.empty(2, *lattice.shape, device=lattice.device)
        for nb in self.neighbours:
            torch.index_select(lattice, 0, nb[0], out=pair[0])
            torch.index_select(lattice, 0, nb[1], out=pair[1])
            lattice = torch.add(lattice, pair[0].add_(pair[1]), alpha=0.5)
        if self.slice_csr is not None:
            return self.slice_csr @ lattice[: self.m]
        out = lattice.index_select(0, self.offsets[0]) * self.weights[0]
        for j in range(1, self.offsets.shape[0]):
            out += lattice.index_select(0, self.offsets[j]) * self.weights[j]
        return out


def build_lattice(
    features: torch.Tensor, owner: torch.Tensor, ghosts: torch.Tensor, *, sparse: bool | None = None
) -> Lattice:
    """Lattice over d×N float32 ``features`` of points of several images (``owner``: image per point).

    ``ghosts``: the image index once for each image whose pixel count is not a multiple of 4 (zero
    features, no values). ``sparse``: CSR products (default on CPU) or segment sums and gathers.
    """
    d, n = features.shape
    d1, dev = d + 1, features.device
    sparse = dev.type == "cpu" if sparse is None else sparse
    feats = torch.cat([features, features.new_zeros(d, len(ghosts))], 1)
    rem0, rank, bary = _simplex(_elevate(feats))
    qbase = torch.div(rem0[:d], d1, rounding_mode="floor").long()
    keys = _Keys(qbase, int(owner.max()) + 1 if n else 1)
    codes = keys.vertex_codes(qbase, rank, torch.cat([owner, ghosts.to(dev)]))
    sorted_codes, order = torch.sort(codes.reshape(-1), stable=True)  # by vertex, then point
    start = torch.ones_like(sorted_codes, dtype=torch.bool)
    start[1:] = sorted_codes[1:] != sorted_codes[:-1]
    sorted_ids = torch.cumsum(start, 0) - 1
    m = int(sorted_ids[-1]) + 1
    ids = torch.empty_like(sorted_ids).scatter_(0, order, sorted_ids)
    vertex_codes = sorted_codes[start]
    neighbours = _lookup(vertex_codes, keys.neighbours(vertex_codes), m)
    neighbours = torch.cat([neighbours, neighbours.new_full((d1, 2, 1), m)], 2)
    if len(ghosts):  # ghost entries define vertices but carry no value
        real = order < n * d1
        order, sorted_ids = order[real], sorted_ids[real]
    points = torch.div(order, d1, rounding_mode="floor")
    entry_w = bary.T.reshape(-1)[order]
    lengths = torch.bincount(sorted_ids, minlength=m)
    alpha = float(np.float32(1.0) / np.float32(1.0 + 2.0 ** (-d)))
    offsets, weights = ids.view(-1, d1)[:n], bary[:, :n] * alpha
    if not sparse:
        return Lattice(n, m, neighbours, None, None, points, entry_w[:, None], lengths,
                       offsets.T.contiguous(), weights[:, :, None])  # fmt: skip
    crow = torch.zeros(m + 1, dtype=torch.long, device=dev)
    crow[1:] = torch.cumsum(lengths, 0)
    offsets, perm = offsets.sort(1)  # CSR rows list their columns in order
    slice_w = weights.T.gather(1, perm)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        splat = torch.sparse_csr_tensor(crow, points, entry_w, (m, n))
        slice_crow = torch.arange(0, n * d1 + 1, d1, device=dev)
        slice_ = torch.sparse_csr_tensor(slice_crow, offsets.reshape(-1), slice_w.reshape(-1), (n, m))
    return Lattice(n, m, neighbours, splat, slice_, None, None, None, None, None)


def locality_order(features: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """A permutation of the points grouping those near the same lattice point (image first).

    Splat reads the values of each vertex's points; in raster order they are scattered over many
    image rows, in this order they are mostly adjacent (about 2x faster splats on CPU)."""
    d = features.shape[0]
    point = torch.round(_elevate(features)[:d] * float(np.float32(1.0) / np.float32(d + 1))).long()
    lo = point.amin(1, keepdim=True)
    span = (point.amax(1) - lo[:, 0] + 1).tolist()
    key = owner.clone()
    for i in range(d):
        if math.prod(span[: i + 1]) * (int(owner.max()) + 1 if len(owner) else 1) >= _PACK_LIMIT:
            break  # coarser grouping is still a valid order
        key = key * span[i] + (point[i] - lo[i])
    return torch.argsort(key, stable=True)


def _lookup(keys: torch.Tensor, queries: torch.Tensor, missing: int) -> torch.Tensor:
    """Index of each query in the sorted ``keys``, or ``missing``."""
    pos = torch.searchsorted(keys, queries).clamp_(max=len(keys) - 1)
    return torch.where(keys[pos] == queries, pos, missing)
