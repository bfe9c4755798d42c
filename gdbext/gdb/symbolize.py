"""Turn guest code addresses into report frames: our symbol tables plus gdb's line tables."""
from __future__ import annotations

import gdb

from ..core.report import Frame
from .session import SESSION


def frame_for(pc: int, return_address: bool = True) -> Frame:
    """Frame of PC; for a return address the line is the call's (pc - 1), as backtraces show."""
    located = SESSION.symbolizer().lookup(pc)
    sal = gdb.find_pc_line(pc - 1 if return_address else pc)
    file = sal.symtab.filename if sal.symtab else None
    return Frame(pc, str(located) if located else None, located.module if located else None,
                 file, sal.line or None if file else None)
