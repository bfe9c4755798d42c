"""Host-side kmemcheck in gdb: checker.py (scope, on/off), armed.py (state while on), faults.py
(the page-fault and single-step hooks), slabs.py (slab lifetimes), modulescope.py (a module's
allocation calls), watchdog.py, details.py (what a report needs from DWARF)."""
from .checker import KMEMCHECK, Kmemcheck, Suppression, register_events

__all__ = ["KMEMCHECK", "Kmemcheck", "Suppression", "register_events"]
