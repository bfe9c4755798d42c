"""The guest heap as columns (numpy arrays), one row per live object kmemleak would track.

Slab objects come in groups (one group per cache) so the scanner can read a whole cache's slabs
with one vectorized gather; other objects (vmalloc areas, large kmallocs) are listed one by one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Object kinds.
SLAB, LARGE, VMALLOC = 0, 1, 2
KIND_NAMES = {SLAB: "slab", LARGE: "large kmalloc", VMALLOC: "vmalloc"}

# min_count with kmemleak's meaning (mm/kmemleak.c, 6.1).
MIN_COUNT_BLACK = -1   # kmemleak_ignore(): never reported, never scanned
MIN_COUNT_GRAY = 0     # kmemleak_not_leak(): never reported, always scanned


@dataclass
class CacheInfo:
    """What the walker read of one struct kmem_cache."""
    address: int
    name: str
    size: int            # slot stride (object + metadata)
    object_size: int
    offset: int          # free pointer offset inside a slot
    inuse: int
    red_left_pad: int
    flags: int
    random: int          # CONFIG_SLAB_FREELIST_HARDENED key, 0 when not hardened
    objects_per_slab: int
    slab_bytes: int
    ctor: int = 0        # constructor: objects are initialized when their slab is made


@dataclass
class SlabGroup:
    """All slabs of one cache: slab i starts at slab_vaddr[i] (direct map) / slab_paddr[i];
    its objects are rows first_row[i] .. first_row[i] + live_count[i] of the heap table."""
    cache: CacheInfo
    slab_vaddr: np.ndarray      # uint64
    slab_paddr: np.ndarray      # uint64
    slot_live: np.ndarray       # bool, (nslabs, objects_per_slab)
    scan_from: int = 0          # bytes of every object not scanned (kmemleak_scan_area rules)


@dataclass
class Extra:
    """Per-object facts that only some objects have."""
    caller: int | None = None        # vmalloc caller
    vm_struct: int | None = None     # vmalloc: its struct vm_struct * (surplus references)


@dataclass
class Track:
    """SLUB user tracking of one object (struct track with slub_debug=U)."""
    addr: int
    pid: int
    cpu: int
    when: int                      # jiffies
    stack: list[int] = field(default_factory=list)


@dataclass
class HeapError:
    """Allocator state the walker could not trust (a corrupted freelist, a bad pointer).
    KIND, CACHE and OBJECT name the bug when the walker can tell (a double free, the free
    object whose free pointer was overwritten)."""
    where: int
    what: str
    kind: str = "heap walk error"
    cache: str | None = None
    object: int | None = None

    def __str__(self) -> str:
        return f"{self.where:#x}: {self.what}"


@dataclass
class Heap:
    """Live objects sorted by start address. cache[i] indexes CACHES (-1: not a slab object)."""
    start: np.ndarray           # uint64
    size: np.ndarray            # uint64
    kind: np.ndarray            # uint8
    cache: np.ndarray           # int32
    min_count: np.ndarray       # int8
    scan_from: np.ndarray       # uint32
    caches: list[CacheInfo]
    groups: list[tuple[SlabGroup, np.ndarray]]   # group and its live rows (heap indices)
    extra: dict[int, Extra] = field(default_factory=dict)   # by heap index
    errors: list[HeapError] = field(default_factory=list)
    no_scan: np.ndarray | None = None     # bool: kmemleak_no_scan()
    # kmemleak_scan_area(): object index -> the (address, size) ranges that alone are scanned
    scan_areas: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def __post_init__(self):
        if self.no_scan is None:
            self.no_scan = np.zeros(len(self.start), bool)

    def scannable(self) -> np.ndarray:
        return (self.min_count != MIN_COUNT_BLACK) & ~self.no_scan

    def __len__(self) -> int:
        return len(self.start)

    @property
    def end(self) -> np.ndarray:
        return self.start + self.size

    def find(self, addr: int) -> int | None:
        """Index of the object containing ADDR, interior addresses included."""
        i = int(np.searchsorted(self.start, np.uint64(addr), side="right")) - 1
        if i >= 0 and addr < int(self.start[i]) + int(self.size[i]):
            return i
        return None


class HeapBuilder:
    """Collects slab groups and single objects, then sorts them into a Heap."""

    def __init__(self, caches: list[CacheInfo]):
        self.caches = caches
        self.groups: list[SlabGroup] = []
        self.singles: list[tuple[int, int, int, int, Extra | None]] = []
        self.errors: list[HeapError] = []
        self.untrusted: list[tuple[int, int]] = []   # (group index, slab index)

    def add_group(self, group: SlabGroup) -> int:
        self.groups.append(group)
        return len(self.groups) - 1

    def add_object(self, start: int, size: int, kind: int, min_count: int = 1,
                   extra: Extra | None = None) -> None:
        self.singles.append((start, size, kind, min_count, extra))

    def build(self) -> Heap:
        starts, sizes, kinds, caches, mins, scan_from = [], [], [], [], [], []
        for group in self.groups:
            c = group.cache
            n = group.slot_live.shape[1]
            slot_start = (group.slab_vaddr[:, None] + np.uint64(c.red_left_pad)
                          + np.arange(n, dtype=np.uint64)[None, :] * np.uint64(c.size))
            live = slot_start[group.slot_live]
            starts.append(live)
            sizes.append(np.full(len(live), c.object_size, np.uint64))
            kinds.append(np.full(len(live), SLAB, np.uint8))
            caches.append(np.full(len(live), self.caches.index(c), np.int32))
            mins.append(np.ones(len(live), np.int8))
            scan_from.append(np.full(len(live), group.scan_from, np.uint32))
        extras_in = []
        for start, size, kind, min_count, extra in self.singles:
            starts.append(np.array([start], np.uint64))
            sizes.append(np.array([size], np.uint64))
            kinds.append(np.array([kind], np.uint8))
            caches.append(np.array([-1], np.int32))
            mins.append(np.array([min_count], np.int8))
            scan_from.append(np.zeros(1, np.uint32))
            extras_in.append(extra)
        cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt))
        start = cat(starts, np.uint64)
        order = np.argsort(start, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        heap = Heap(start[order], cat(sizes, np.uint64)[order], cat(kinds, np.uint8)[order],
                    cat(caches, np.int32)[order], cat(mins, np.int8)[order],
                    cat(scan_from, np.uint32)[order], self.caches, [], {}, list(self.errors))
        pos = 0
        for gi, group in enumerate(self.groups):
            rows = np.full(group.slot_live.shape, -1, np.int64)
            count = int(group.slot_live.sum())
            rows[group.slot_live] = rank[pos:pos + count]
            pos += count
            heap.groups.append((group, rows))
        for extra in extras_in:
            if extra is not None:
                heap.extra[int(rank[pos])] = extra
            pos += 1
        for gi, slab in self.untrusted:
            rows = heap.groups[gi][1][slab]
            heap.min_count[rows[rows >= 0]] = MIN_COUNT_GRAY
        return heap
