"""Turn guest code addresses into report frames: our symbol tables plus gdb's line tables."""
from __future__ import annotations

import gdb

from ..core.report import Frame
from .session import SESSION


_source_root: list[str] = []


def source_root() -> str:
    """The kernel tree's directory, from where start_kernel's init/main.c lives, so report paths
    read `mm/slab_common.c` instead of the build machine's absolute path."""
    if not _source_root:
        root = ""
        try:
            sal = gdb.find_pc_line(int(gdb.parse_and_eval("&start_kernel").cast(
                gdb.lookup_type("unsigned long"))))
            if sal.symtab and sal.symtab.filename.endswith("init/main.c"):
                root = sal.symtab.filename[:-len("init/main.c")]
        except gdb.error:
            pass
        _source_root.append(root)
    return _source_root[0]


def frame_for(pc: int, return_address: bool = True) -> Frame:
    """Frame of PC; for a return address the line is the call's (pc - 1), as backtraces show."""
    located = SESSION.symbolizer().lookup(pc)
    sal = gdb.find_pc_line(pc - 1 if return_address else pc)
    file = sal.symtab.filename if sal.symtab else None
    root = source_root()
    if file and root and file.startswith(root):
        file = file[len(root):]
    return Frame(pc, str(located) if located else None, located.module if located else None,
                 file, sal.line or None if file else None)
