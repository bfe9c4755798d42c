"""Where a leak scan starts (mm/kmemleak.c kmemleak_scan(), 6.1): kernel data, bss and
ro_after_init, every CPU's per-CPU area, module data, task stacks, in-use struct pages, and
boot-time (memblock) allocations, which kmemleak registers as never-reported gray objects."""
from __future__ import annotations

import numpy as np

from .heap.context import PAGE_SIZE, STRUCT_PAGE_SIZE, GuestContext
from .heap.model import MIN_COUNT_BLACK, MIN_COUNT_GRAY, Heap
from .kernel import ModuleInfo, list_for_each
from .leaks import Root

THREAD_SIZE = 16 << 10      # x86-64 6.1 without KASAN (THREAD_SIZE_ORDER 2)
SECTIONS = [(".data", "_sdata", "_edata"), (".bss", "__bss_start", "__bss_stop"),
            (".data..ro_after_init", "__start_ro_after_init", "__end_ro_after_init")]


def section_roots(ctx: GuestContext) -> list[Root]:
    """.data, .bss, .data..ro_after_init and every CPU's static per-CPU section (dynamic
    per-CPU data: percpu.percpu_roots)."""
    lay = ctx.layout
    roots = [Root(name, lay.sym(a), lay.sym(b) - lay.sym(a)) for name, a, b in SECTIONS]
    start, end = lay.sym("__per_cpu_start"), lay.sym("__per_cpu_end")
    roots += [Root(f"static per-CPU data of CPU {cpu}", (start + off) & (1 << 64) - 1, end - start)
              for cpu, off in enumerate(ctx.cpu_offsets)]
    return [r for r in roots if r.size > 0]


def module_roots(ctx: GuestContext, modules: list[ModuleInfo]) -> list[Root]:
    """The writable part of each module's core area: struct module and its data sections
    (kmemleak_load_module() scans exactly the SHF_WRITE, non-exec sections)."""
    roots = []
    for mod in modules:
        ro_size = ctx.vmem.u32(mod.address + ctx.layout.off("module.core_layout.ro_size"))
        if mod.size > ro_size:
            roots.append(Root(f"module {mod.name} data", mod.base + ro_size, mod.size - ro_size))
    return roots


def tasks(ctx: GuestContext) -> list[tuple[int, int, str]]:
    """(task_struct *, pid, comm) of every thread of every process (for_each_process_thread)."""
    lay, mem = ctx.layout, ctx.vmem
    out = []
    init = lay.sym("init_task")
    procs = [init] + [p for p in _list(ctx, init + lay.off("task_struct.tasks"), "task_struct.tasks")]
    for proc in procs:
        signal = ctx.u64(proc + lay.off("task_struct.signal"))
        threads = _list(ctx, signal + lay.off("signal_struct.thread_head"), "task_struct.thread_node")
        for t in threads or [proc]:
            out.append((t, *task_identity(mem, lay, t)))
    return out


def current_task(vmem, layout, gs_base: int) -> int:
    """The struct task_struct * running on the CPU whose kernel GS base is GS_BASE."""
    if layout.has_sym("current_task"):       # 6.1: DEFINE_PER_CPU(struct task_struct *, current_task)
        var = layout.sym("current_task")
    else:                                    # 6.2+: struct pcpu_hot pcpu_hot, .current_task
        var = layout.sym("pcpu_hot") + layout.off("pcpu_hot.current_task")
    return vmem.u64((gs_base + var) & (1 << 64) - 1)


def task_identity(vmem, layout, task: int) -> tuple[int, str]:
    """(pid, comm) of one struct task_struct *."""
    return (vmem.u32(task + layout.off("task_struct.pid")),
            vmem.cstr(task + layout.off("task_struct.comm"), 16))


def _list(ctx: GuestContext, head: int, link: str) -> list[int]:
    off = ctx.layout.off(link)
    return [node - off for node in list_for_each(ctx.vmem, head)]


NR_CACHED_STACKS = 2    # kernel/fork.c, 6.1


def cached_stacks(ctx: GuestContext) -> set[int]:
    """Stacks of dead tasks parked in the per-CPU cached_stacks[] (CONFIG_VMAP_STACK)."""
    lay = ctx.layout
    if not lay.has_sym("cached_stacks"):
        return set()
    out = set()
    for offset in ctx.cpu_offsets:
        for k in range(NR_CACHED_STACKS):
            vm = ctx.u64((lay.sym("cached_stacks") + offset + 8 * k) & (1 << 64) - 1)
            if vm:
                out.add(ctx.u64(vm + lay.off("vm_struct.addr")))
    return out


Task = tuple[int, int, str]     # (task_struct *, pid, comm), as tasks() lists them


def settle_stacks(ctx: GuestContext, heap: Heap, task_list: list[Task]) -> None:
    """Task stacks are vmalloc objects, but not leak candidates. Live ones are scanned through
    stack_roots() (live part only), never as whole objects; cached stacks hold only a dead
    task's frames and are not scanned at all."""
    live = {ctx.u64(task + ctx.layout.off("task_struct.stack")) for task, _, _ in task_list}
    for start, min_count in [(a, MIN_COUNT_GRAY) for a in live] + \
                            [(a, MIN_COUNT_BLACK) for a in cached_stacks(ctx)]:
        i = heap.find(start)
        if i is not None and int(heap.start[i]) == start:
            heap.min_count[i] = min_count
            heap.no_scan[i] = True


def stack_roots(ctx: GuestContext, task_list: list[Task]) -> list[Root]:
    """Live part of each task stack. kmemleak scans all THREAD_SIZE bytes; below the saved
    stack pointer of a task that is not running lie only dead frames, whose stale pointers would
    hide leaks, so only [thread.sp, top) is scanned then (running tasks: the whole stack)."""
    lay = ctx.layout
    roots = []
    for task, pid, comm in task_list:
        stack = ctx.u64(task + lay.off("task_struct.stack"))
        if not stack:
            continue
        start = stack
        if not ctx.vmem.u32(task + lay.off("task_struct.on_cpu")):
            sp = ctx.u64(task + lay.off("task_struct.thread.sp"))
            if stack <= sp < stack + THREAD_SIZE:
                start = sp & ~7
        roots.append(Root(f"stack of {comm}/{pid}", start, stack + THREAD_SIZE - start))
    return roots


def reserved_roots(ctx: GuestContext, memmap: np.ndarray, skip: list[tuple[int, int]]) -> list[Root]:
    """Runs of PG_reserved pages (memblock allocations: hash tables, ...) outside the kernel
    image, whose sections are roots of their own, and outside SKIP (direct-map ranges scanned
    more precisely elsewhere: the first per-CPU chunk)."""
    lay = ctx.layout
    reserved = (memmap[:, 0] & np.uint64(1 << lay.const("PG_reserved"))) != 0
    text = ctx.vmem.to_phys(lay.sym("_text"))
    end = text + lay.sym("_end") - lay.sym("_text")
    pfn = np.arange(len(memmap))
    reserved &= ~((pfn >= text // PAGE_SIZE) & (pfn < (end + PAGE_SIZE - 1) // PAGE_SIZE))
    mm_lo = ctx.vmem.to_phys(ctx.vmemmap) // PAGE_SIZE
    reserved &= ~((pfn >= mm_lo) & (pfn < mm_lo + (len(memmap) * STRUCT_PAGE_SIZE) // PAGE_SIZE))
    reserved[:256] = False          # the first MiB: BIOS and real-mode leftovers
    for lo, hi in skip:
        lo_pfn, hi_pfn = (lo - ctx.page_offset) // PAGE_SIZE, (hi - ctx.page_offset + PAGE_SIZE - 1) // PAGE_SIZE
        reserved[max(lo_pfn, 0):max(hi_pfn, 0)] = False
    edges = np.diff(np.concatenate([[0], reserved.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return [Root("boot-time (memblock) allocation", ctx.page_offset + s * PAGE_SIZE,
                 (e - s) * PAGE_SIZE) for s, e in zip(starts.tolist(), ends.tolist())]


def page_struct_rows(ctx: GuestContext, memmap: np.ndarray) -> np.ndarray:
    """pfns whose struct page kmemleak scans: pages in use (page_count > 0)."""
    word, byte = divmod(ctx.layout.off("page._refcount"), 8)
    refcount = (memmap[:, word] >> np.uint64(byte * 8)) & np.uint64(0xFFFFFFFF)
    return np.nonzero(refcount != 0)[0]


def kfree_rcu_roots(ctx: GuestContext) -> list[Root]:
    """Objects queued by kvfree_rcu() wait in pages of pointers (struct kvfree_rcu_bulk_data)
    that are no heap object and no root: kvfree_call_rcu() calls kmemleak_ignore() on each, as
    the caller considers it freed. A breakpoint there would stop every kfree_rcu(); the pages
    are scanned as roots instead, which keeps the queued objects from being reported.
    6.1 (kernel/rcu/tree.c): per-CPU krc: bkvhead[FREE_N_CHANNELS] (not yet waiting for a grace
    period) and krw_arr[KFREE_N_BATCHES].bkvhead_free[] (waiting); array lengths from DWARF."""
    lay = ctx.layout
    if not lay.has_sym("krc"):
        return []
    channels = (lay.off("kfree_rcu_cpu.krw_arr") - lay.off("kfree_rcu_cpu.bkvhead")) // 8
    batches = ((lay.off("kfree_rcu_cpu.lock") - lay.off("kfree_rcu_cpu.krw_arr"))
               // lay.size("kfree_rcu_cpu_work"))
    records = lay.off("kvfree_rcu_bulk_data.records")
    roots = []
    for cpu, offset in enumerate(ctx.cpu_offsets):
        krc = (lay.sym("krc") + offset) & (1 << 64) - 1
        heads = [krc + lay.off("kfree_rcu_cpu.bkvhead") + 8 * ch for ch in range(channels)]
        for b in range(batches):
            work = krc + lay.off("kfree_rcu_cpu.krw_arr") + b * lay.size("kfree_rcu_cpu_work")
            heads += [work + lay.off("kfree_rcu_cpu_work.bkvhead_free") + 8 * ch
                      for ch in range(channels)]
        for head in heads:
            page, seen = ctx.u64(head), 0
            while page and seen < 1024:
                count = min(ctx.u64(page + lay.off("kvfree_rcu_bulk_data.nr_records")),
                            (PAGE_SIZE - records) // 8)
                if count:
                    roots.append(Root(f"kvfree_rcu queue of CPU {cpu}", page + records, 8 * count))
                page, seen = ctx.u64(page + lay.off("kvfree_rcu_bulk_data.next")), seen + 1
    return roots
