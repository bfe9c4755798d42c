"""What kmemcheck tracks: regions of hidden guest memory, the objects in them, their lifetimes.

A region is the unit that is hidden and shown together: a slab (one or more pages of one
cache), the pages of one large kmalloc, or one vmalloc area. Slab regions hold many object
slots; the other two hold one object. A region stays hidden while something pins it: its cache
is in the scope (`track cache`), or an object of the scope lives in it (module scope), or one
was freed there recently: until its slot is handed out again or QUARANTINE accesses to other
objects of the region came by (a use after free shortly after the free still faults, and a
page the module shares with busy kernel objects does not stay hidden for long).

Object lifetimes in slabs follow the allocator's own behaviour instead of a stop per
kmalloc/kfree: SLUB touches an object's free pointer exactly when it frees the object or hands
it out, and that touch faults like any other access. So an allocator access to the free-pointer
word marks the object freed; the next access by anyone else finds it either still on a freelist
(a use after free) or allocated again (a new lifetime). An object of a cache with a constructor
starts every lifetime in its constructed state (the cache's promise: what the constructor
wrote is initialized, the rest is not), so its frees are not use-after-free material, as in
kmemcheck's kmemcheck_slab_free(); the constructor's own writes start no lifetime.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .heap.context import PAGE_SIZE, GuestContext
from .heap.model import CacheInfo
from .heap.slub import FreelistError, SlabRef, free_indices
from .shadow import FREED, INITIALIZED, UNALLOCATED, UNINITIALIZED, Shadow

SLAB, LARGE, VMALLOC = "slab", "large kmalloc", "vmalloc"
QUARANTINE = 64             # foreign accesses a region pinned only by freed objects stays hidden
SLAB_TYPESAFE_BY_RCU = 0x00080000       # include/linux/slab.h (6.1): freed objects stay readable


@dataclass
class Origin:
    """An allocation whose uninitialized bytes may be read later, maybe after a copy."""
    id: int
    object: int
    size: int
    cache: str
    alloc_pcs: list[int] = field(default_factory=list)   # allocation backtrace, return addresses


@dataclass
class Region:
    """Guest memory hidden and shown as one: a slab, a large kmalloc, a vmalloc area."""
    kind: str
    start: int
    size: int                          # bytes, whole pages
    cache: CacheInfo | None = None     # slabs only
    slab: SlabRef | None = None
    pinned: bool = False               # its cache is in the scope: hidden while it exists
    label: str = ""                    # how reports name where objects come from
    foreign: int = 0                   # accesses to objects out of the scope, in quarantine

    @property
    def pages(self) -> range:
        return range(self.start, self.start + self.size, PAGE_SIZE)

    def slot(self, addr: int) -> tuple[int, int] | None:
        """(start, size) of the object slot holding ADDR, None in a slab's tail or red zone."""
        if self.slab is None:
            return (self.start, self.size) if self.start <= addr < self.start + self.size else None
        index = self.slab.index(self.cache, addr)
        if index is None:
            return None
        start = self.slab.object_start(self.cache, index)
        return (start, self.cache.object_size) if addr < start + self.cache.size else None

    def slot_starts(self) -> list[int]:
        if self.slab is None:
            return [self.start]
        return [self.slab.object_start(self.cache, i) for i in range(self.slab.objects)]


@dataclass
class TrackedObject:
    start: int
    size: int
    region: Region
    alive: bool
    origin: int = 0
    scoped: bool = True        # findings on it are reported; it pins its region
    call: int = 0              # the pending allocation call during which its lifetime began
    name: str = ""             # the cache name its allocator gave (a merged cache's alias)


class Lifetimes:
    """Regions, objects and the shadow of their bytes, kept on plain values.

    CTX reads allocator state (freelists); IN_SCOPE(cache) says whether a cache is tracked;
    READ_TRACK(cache, start) gives the allocation backtrace SLUB recorded (slub_debug=U)."""

    def __init__(self, ctx: GuestContext, shadow: Shadow,
                 in_scope: Callable[[CacheInfo], bool],
                 read_track: Callable[[CacheInfo, int], list[int]] = lambda c, a: []):
        self.ctx = ctx
        self.shadow = shadow
        self.in_scope = in_scope
        self.read_track = read_track
        self.regions: dict[int, Region] = {}        # page -> region
        self.objects: dict[int, TrackedObject] = {}  # object start -> lifetime
        self.origins: dict[int, Origin] = {}
        self.constructed: dict[int, bytes] = {}     # constructor-cache object -> its state then

    # -- regions -----------------------------------------------------------------------------
    def track_slab(self, slab: SlabRef, cache: CacheInfo, fresh: bool,
                   ctor_ran: bool = True) -> Region:
        """Shadow a slab. A FRESH slab (just made) holds no allocated object: its slots are
        unallocated; for a constructor cache uninitialized when the constructor is yet to run
        (its writes then initialize what it sets), initialized when it CTOR_RAN unseen. An
        existing one keeps its objects' contents as initialized (their history is unknown) and
        its free slots as freed."""
        pinned = self.in_scope(cache)
        region = Region(SLAB, slab.base, cache.slab_bytes, cache, slab, pinned, cache.name)
        self._claim(region, UNALLOCATED)
        free = set() if fresh else self._free_or_empty(slab, cache)
        for index in range(slab.objects):
            start = slab.object_start(cache, index)
            alive = not fresh and index not in free
            if alive or (cache.ctor and (ctor_ran or not fresh)):
                state = INITIALIZED
            else:
                state = UNINITIALIZED if cache.ctor else UNALLOCATED if fresh else FREED
            self.shadow.set(start, cache.object_size, state)
            self.objects[start] = TrackedObject(start, cache.object_size, region, alive,
                                                scoped=pinned)
        return region

    def track_area(self, kind: str, start: int, size: int, label: str) -> Region:
        """Shadow a large kmalloc or a vmalloc area of SIZE bytes (whole pages from START): one
        object, allocated now; the caller sets its bytes' states."""
        pages = -(-size // PAGE_SIZE) * PAGE_SIZE
        region = Region(kind, start, pages, label=label)
        self._claim(region, UNINITIALIZED)
        self.objects[start] = TrackedObject(start, size, region, True)
        return region

    def _claim(self, region: Region, state: int) -> None:
        for page in region.pages:
            old = self.regions.get(page)
            if old is not None:
                self.release(old)
        self.shadow.untrack(region.start, region.size)
        self.shadow.track(region.start, region.size, state)
        for page in region.pages:
            self.regions[page] = region

    def release(self, region: Region) -> None:
        """Stop shadowing REGION: its pages, objects and their states are forgotten."""
        for page in region.pages:
            if self.regions.get(page) is region:
                del self.regions[page]
        self.shadow.untrack(region.start, region.size)
        for start in region.slot_starts():
            obj = self.objects.get(start)
            if obj is not None and obj.region is region:
                del self.objects[start]
            self.constructed.pop(start, None)

    def region_of(self, addr: int) -> Region | None:
        return self.regions.get(addr & ~(PAGE_SIZE - 1))

    def is_pinned(self, region: Region) -> bool:
        """Whether REGION must stay hidden: its cache is tracked, or an object of the scope
        lives in it, or was freed there and is in quarantine."""
        if region.pinned:
            return True
        objects = [o for o in map(self.objects.get, region.slot_starts()) if o is not None and o.scoped]
        if any(o.alive for o in objects):
            region.foreign = 0
            return True
        if objects and region.foreign < QUARANTINE:
            return True
        for obj in objects:
            obj.scoped = False              # out of quarantine: no longer the scope's
        return False

    def _free_or_empty(self, slab: SlabRef, cache: CacheInfo) -> set[int]:
        try:
            return free_indices(self.ctx, cache, slab)
        except FreelistError:
            return set()

    # -- lifetimes -----------------------------------------------------------------------------
    def object_at(self, addr: int) -> tuple[TrackedObject | None, Region | None]:
        region = self.region_of(addr)
        if region is None:
            return None, None
        slot = region.slot(addr)
        return (self.objects.get(slot[0]) if slot else None), region

    def begin(self, region: Region, start: int, size: int, state: int | None, scoped: bool,
              call: int = 0, name: str = "") -> TrackedObject:
        """A new lifetime of the object at START: its bytes take STATE, or (None) the
        object's constructed state: what they were at its first lifetime."""
        origin = self.new_origin(start, size, name or region.label, region.cache) if scoped else None
        if state is not None:
            self.shadow.set(start, size, state, origin.id if origin else 0)
        else:
            constructed = self.constructed.setdefault(start, self.shadow.get(start, size))
            self.shadow.put(start, constructed, [origin.id if origin else 0] * size)
        obj = TrackedObject(start, size, region, True, origin.id if origin else 0, scoped, call,
                            name)
        self.objects[start] = obj
        return obj

    def new_origin(self, start: int, size: int, label: str, cache: CacheInfo | None) -> Origin:
        pcs = self.read_track(cache, start) if cache is not None else []
        origin = Origin(len(self.origins) + 1, start, size, label, pcs)
        self.origins[origin.id] = origin
        return origin

    def allocator_access(self, addr: int) -> TrackedObject | None:
        """SLUB reads or writes an object's free pointer only while freeing it or handing it
        out: either way its old contents are dead. Returns the object that died."""
        obj, region = self.object_at(addr)
        if obj is None or region.slab is None or not obj.alive:
            return None
        if addr != obj.start + region.cache.offset:
            return None
        obj.alive = False
        if not region.cache.ctor:
            self.shadow.set(obj.start, obj.size, FREED)
        return obj

    def sync(self, addr: int, size: int, call: int = 0, constructor: int = 0) -> None:
        """Bring every object touched by [addr, addr+size) up to date with the allocator. CALL
        is the pending allocation call the access happens in (0: none); CONSTRUCTOR the
        function making it, when that is a cache constructor (its writes start no lifetime)."""
        end = addr + size
        while addr < end:
            region = self.region_of(addr)
            step_end = min(end, (addr & ~(PAGE_SIZE - 1)) + PAGE_SIZE)
            if region is not None and region.slab is not None:
                slot = region.slot(addr)
                if slot is not None:
                    if not (constructor and constructor == region.cache.ctor):
                        self._sync_slab_object(region, slot[0], call)
                    step_end = min(end, slot[0] + region.cache.size)
            addr = max(step_end, addr + 1)

    def _sync_slab_object(self, region: Region, start: int, call: int) -> None:
        obj = self.objects.get(start)
        if obj is not None and obj.alive:
            return
        cache = region.cache
        if region.slab.index(cache, start) in self._free_or_empty(region.slab, cache):
            if cache.flags & SLAB_TYPESAFE_BY_RCU:
                self.shadow.set(start, cache.object_size, INITIALIZED)
            return
        # Allocated since the allocator last touched it: a new lifetime. Inside an allocation
        # call the object may be the one the call returns: uninitialized, decided at the
        # return. Otherwise objects outside the scope (on pages shared with module-scope
        # objects) are nobody's concern.
        scoped = self.in_scope(cache)
        if cache.ctor:
            state = None                     # the constructed state carries over
        elif scoped or call:
            state = UNINITIALIZED
        else:
            state = INITIALIZED
        self.begin(region, start, cache.object_size, state, scoped, call)

    def adopt(self, obj: TrackedObject, name: str, backtrace: list[int]) -> None:
        """An object born inside an allocation call turns out to be what the call returned:
        it joins the scope, named as its allocator asked."""
        obj.scoped, obj.name = True, name or obj.name
        origin = self.origins.get(obj.origin)
        if origin is None:
            origin = self.new_origin(obj.start, obj.size, obj.name or obj.region.label,
                                     obj.region.cache)
            obj.origin = origin.id
            self.shadow.set_origin(obj.start, obj.size, origin.id)
        origin.cache = obj.name or origin.cache
        if backtrace:
            origin.alloc_pcs = backtrace

    def settle_call(self, call: int, keep: TrackedObject | None) -> None:
        """The call returned: objects born in it other than KEEP were the allocator's own
        (internal allocations): initialized, out of the scope."""
        for obj in self.objects.values():
            if obj.call == call and obj is not keep:
                obj.call = 0
                if not obj.scoped:
                    self.shadow.set(obj.start, obj.size, INITIALIZED)
        if keep is not None:
            keep.call = 0

    # -- inspection ------------------------------------------------------------------------
    def live_objects(self) -> int:
        return sum(1 for o in self.objects.values() if o.alive)
