"""The leak scan: a conservative tracing pass over guest memory, with kmemleak's semantics.

1. Every scanned word (roots, then objects) that points into a live object, interior pointers
   included, is a reference edge; self references do not count (mm/kmemleak.c scan_block()).
2. Roots add to the target's count; an object is gray when count >= min_count (min_count 0:
   always gray, -1: never). Gray objects are scanned; their references propagate in waves.
3. Surplus references to a vmalloc area's struct vm_struct count for the area (excess_ref).
4. White objects with min_count > 0 are leaks: *direct* when no other leak points to them,
   *indirect* when reachable only through other leaks (cycles get one direct representative).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .heap.context import GuestContext
from .heap.model import MIN_COUNT_BLACK, Heap

NO_PARENT = -1


@dataclass
class Root:
    name: str
    vaddr: int
    size: int


@dataclass
class Edges:
    src: np.ndarray     # int64: object index, or root_id(k) for root k
    tgt: np.ndarray     # int64: object index
    addr: np.ndarray    # uint64: address of the referencing word (0 for registers)


def root_id(k: int) -> int:
    return -2 - k


def root_index(src: int) -> int:
    return -2 - src


class EdgeCollector:
    def __init__(self, heap: Heap):
        self.heap = heap
        self.start = heap.start
        self.end = heap.end
        self.lo = int(heap.start[0]) if len(heap) else 0
        self.hi = int(self.end.max()) if len(heap) else 0
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def targets(self, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in VALS that point into an object, the object indices)."""
        cand = np.nonzero((vals >= np.uint64(self.lo)) & (vals < np.uint64(self.hi)))[0]
        if not len(cand):
            return cand, cand
        v = vals[cand]
        idx = np.searchsorted(self.start, v, side="right").astype(np.int64) - 1
        ok = idx >= 0
        ok[ok] &= v[ok] < self.end[idx[ok]]
        return cand[ok], idx[ok]

    def add_region(self, src: int, vaddr: int, words: np.ndarray) -> None:
        pos, tgt = self.targets(words)
        keep = tgt != src
        pos, tgt = pos[keep], tgt[keep]
        if len(pos):
            self.parts.append((np.full(len(pos), src, np.int64), tgt,
                               np.uint64(vaddr) + pos.astype(np.uint64) * np.uint64(8)))

    def add_values(self, src: int, vals: np.ndarray) -> None:
        pos, tgt = self.targets(vals)
        if len(pos):
            self.parts.append((np.full(len(pos), src, np.int64), tgt, np.zeros(len(pos), np.uint64)))

    def add_slab_group(self, ctx: GuestContext, group, rows: np.ndarray, scannable: np.ndarray) -> None:
        c = group.cache
        nwords = c.slab_bytes // 8
        if ctx.ram is not None:
            ram64 = ctx.ram[:len(ctx.ram) // 8 * 8].view(np.uint64)
            index = (group.slab_paddr[:, None] // np.uint64(8)
                     + np.arange(nwords, dtype=np.uint64)[None, :])
            words = ram64[index]
        else:
            words = np.stack([np.frombuffer(ctx.phys.read(int(p), c.slab_bytes), np.uint64)
                              for p in group.slab_paddr])
        flat = words.reshape(-1)
        pos, tgt = self.targets(flat)
        r, col = np.divmod(pos, nwords)
        byte = col * 8 - c.red_left_pad
        slot, within = np.divmod(byte, c.size)
        ok = (byte >= 0) & (slot < rows.shape[1]) & (within >= group.scan_from) & (within < c.object_size)
        r, col, slot, tgt = r[ok], col[ok], slot[ok], tgt[ok]
        src = rows[r, slot]
        ok = (src >= 0) & (src != tgt)
        ok[ok] &= scannable[src[ok]]
        if ok.any():
            self.parts.append((src[ok], tgt[ok],
                               group.slab_vaddr[r[ok]] + col[ok].astype(np.uint64) * np.uint64(8)))

    def add_rows(self, src: int, base_vaddr: int, rows: np.ndarray, row_index: np.ndarray) -> None:
        """Scan the ROW_INDEX rows of a (n, words) array that starts at BASE_VADDR."""
        width = rows.shape[1]
        words = rows[row_index].reshape(-1)
        pos, tgt = self.targets(words)
        if len(pos):
            r, col = np.divmod(pos, width)
            addr = (np.uint64(base_vaddr) + row_index[r].astype(np.uint64) * np.uint64(width * 8)
                    + col.astype(np.uint64) * np.uint64(8))
            self.parts.append((np.full(len(pos), src, np.int64), tgt, addr))

    def edges(self) -> Edges:
        if not self.parts:
            z = np.zeros(0, np.int64)
            return Edges(z, z, z.astype(np.uint64))
        return Edges(*(np.concatenate([p[i] for p in self.parts]) for i in range(3)))


@dataclass
class PageStructs:
    """In-use struct pages to scan: MEMMAP rows PFNS of the array at ctx.vmemmap."""
    memmap: np.ndarray
    pfns: np.ndarray


def collect_edges(ctx: GuestContext, heap: Heap, roots: list[Root], registers: list[int],
                  pages: PageStructs | None = None) -> Edges:
    """Root ids: 0..len(roots)-1 the regions, then the vCPU registers, then struct pages."""
    scannable = heap.scannable()
    whole = scannable.copy()          # scanned whole; objects with scan areas only there
    whole[list(heap.scan_areas)] = False
    col = EdgeCollector(heap)
    for k, root in enumerate(roots):
        col.add_region(root_id(k), root.vaddr, ctx.words(root.vaddr, root.size))
    col.add_values(root_id(len(roots)), np.array(registers, np.uint64))
    if pages is not None:
        col.add_rows(root_id(len(roots) + 1), ctx.vmemmap, pages.memmap, pages.pfns)
    for group, rows in heap.groups:
        col.add_slab_group(ctx, group, rows, whole)
    slab_rows = np.zeros(len(heap), bool)
    for _, rows in heap.groups:
        slab_rows[rows[rows >= 0]] = True
    for i in np.nonzero(~slab_rows & whole)[0].tolist():
        start, skip = int(heap.start[i]), int(heap.scan_from[i])
        size = int(heap.size[i]) - skip
        if size > 0:
            col.add_region(i, start + skip, ctx.words(start + skip, size & ~7))
    for i, areas in heap.scan_areas.items():
        for addr, size in areas:
            first = (addr + 7) & ~7
            if scannable[i] and addr + size - first >= 8:
                col.add_region(i, first, ctx.words(first, (addr + size - first) & ~7))
    return col.edges()


@dataclass
class ScanResult:
    gray: np.ndarray
    count: np.ndarray
    parent: np.ndarray        # int64: object index, root_id(k), or NO_PARENT
    parent_addr: np.ndarray   # uint64
    leaks: np.ndarray         # object indices, direct leaks first (by address), then indirect
    direct: np.ndarray        # bool per object: a direct leak
    owner: np.ndarray         # int64 per object: the direct leak an indirect one hangs from
    roots: list[Root] = field(default_factory=list)
    edges: Edges | None = None    # every reference found, for `dump`

    def referrers(self, i: int) -> list[tuple[int, int]]:
        """(source, address of the word) of every reference to object I."""
        if self.edges is None:
            return []
        hit = np.nonzero(self.edges.tgt == i)[0]
        return [(int(self.edges.src[k]), int(self.edges.addr[k])) for k in hit.tolist()]


def propagate(heap: Heap, edges: Edges, excess: list[tuple[int, int]]) -> tuple[np.ndarray, ...]:
    n = len(heap)
    min_count = heap.min_count.astype(np.int64)
    scannable = heap.scannable()
    may_gray = min_count != MIN_COUNT_BLACK
    count = np.zeros(n, np.int64)
    parent = np.full(n, NO_PARENT, np.int64)
    parent_addr = np.zeros(n, np.uint64)

    def credit(src, tgt, addr):
        np.add.at(count, tgt, 1)
        unset = parent[tgt] == NO_PARENT
        t, first = np.unique(tgt[unset], return_index=True)
        parent[t] = src[unset][first]
        parent_addr[t] = addr[unset][first]

    is_root = edges.src < 0
    credit(edges.src[is_root], edges.tgt[is_root], edges.addr[is_root])
    # Object edges from scannable sources, grouped by source (CSR).
    obj = ~is_root
    osrc, otgt, oaddr = edges.src[obj], edges.tgt[obj], edges.addr[obj]
    order = np.argsort(osrc, kind="stable")
    osrc, otgt, oaddr = osrc[order], otgt[order], oaddr[order]
    indptr = np.searchsorted(osrc, np.arange(n + 1))

    gray = may_gray & (count >= min_count)
    frontier = np.nonzero(gray & scannable)[0]
    exc_src = np.array([e[0] for e in excess], np.int64)
    exc_tgt = np.array([e[1] for e in excess], np.int64)
    given = np.zeros(len(excess), np.int64)
    while True:
        if len(frontier):
            lens = indptr[frontier + 1] - indptr[frontier]
            total = int(lens.sum())
            if total:
                starts = np.repeat(indptr[frontier] - np.cumsum(lens) + lens, lens)
                idx = starts + np.arange(total)
                credit(osrc[idx], otgt[idx], oaddr[idx])
        if len(excess):
            surplus = np.where(gray[exc_src], np.maximum(count[exc_src] - np.maximum(min_count[exc_src], 0), 0), 0)
            delta = surplus - given
            if delta.any():
                np.add.at(count, exc_tgt, delta)
                unset = (parent[exc_tgt] == NO_PARENT) & (delta > 0)
                parent[exc_tgt[unset]] = exc_src[unset]
                given = surplus
        newly = np.nonzero(may_gray & ~gray & (count >= min_count))[0]
        if not len(newly):
            break
        gray[newly] = True
        frontier = newly[scannable[newly]]
    return gray, count, parent, parent_addr, (osrc, otgt)


def classify(heap: Heap, gray: np.ndarray, obj_edges: tuple[np.ndarray, np.ndarray]):
    """Direct and indirect leaks among the white objects (see the module docstring)."""
    n = len(heap)
    white = ~gray & (heap.min_count > 0)
    src, tgt = obj_edges
    ww = white[src] & white[tgt] & (src != tgt)
    src, tgt = src[ww], tgt[ww]
    indeg = np.bincount(tgt, minlength=n)
    owner = np.full(n, NO_PARENT, np.int64)
    direct = np.zeros(n, bool)
    adjacency: dict[int, list[int]] = {}
    for s, t in zip(src.tolist(), tgt.tolist()):
        adjacency.setdefault(s, []).append(t)
    pending = [i for i in np.nonzero(white)[0].tolist() if indeg[i] == 0]
    remaining = set(np.nonzero(white)[0].tolist())
    while remaining:
        if not pending:                       # only cycles are left: lowest address leads
            pending = [min(remaining)]
        for d in pending:
            if d not in remaining:
                continue
            direct[d] = True
            owner[d] = d
            remaining.discard(d)
            stack = [d]
            while stack:
                for t in adjacency.get(stack.pop(), ()):
                    if t in remaining:
                        remaining.discard(t)
                        owner[t] = d
                        stack.append(t)
        pending = []
    leaks = np.concatenate([np.nonzero(direct)[0], np.nonzero(white & ~direct)[0]])
    return leaks, direct, owner


def root_names(roots: list[Root]) -> list[str]:
    """Names by root index, matching collect_edges()'s root ids."""
    return [r.name for r in roots] + ["vCPU registers", "struct page"]


def scan(ctx: GuestContext, heap: Heap, roots: list[Root], registers: list[int],
         pages: PageStructs | None = None) -> ScanResult:
    edges = collect_edges(ctx, heap, roots, registers, pages)
    excess = []
    for i, extra in heap.extra.items():
        if extra.vm_struct is not None:
            j = heap.find(extra.vm_struct)
            if j is not None and j != i:
                excess.append((j, i))
    gray, count, parent, parent_addr, obj_edges = propagate(heap, edges, excess)
    leaks, direct, owner = classify(heap, gray, obj_edges)
    return ScanResult(gray, count, parent, parent_addr, leaks, direct, owner, roots, edges)
