"""The guest kernel's own reports, parsed from console text."""
from gdbext.core.kernelreports import KernelReport, parse_kernel_reports

OOPS = """kmemgdb_leaks: update_trace = ffff888000a3ae70 expect leak
BUG: kernel NULL pointer dereference, address: 0000000000000000
#PF: supervisor write access in kernel mode
Oops: 0002 [#1] SMP
CPU: 0 PID: 29 Comm: insmod Tainted: G           O       6.1.192 #1
RIP: 0010:kmemgdb_leaks_init+0x92/0x1000 [kmemgdb_leaks]
Call Trace:
 <TASK>
 do_one_initcall+0x4b/0x157
 </TASK>
---[ end trace 0000000000000000 ]---
RIP: 0010:kmemgdb_leaks_init+0x92/0x1000 [kmemgdb_leaks]
"""

SLUB = """=============================================================================
BUG kmalloc-32 (Tainted: G           O      ): Right Redzone overwritten
-----------------------------------------------------------------------------

0xffff888000b7c0a0-0xffff888000b7c0a7 @offset=160. First byte 0x5a instead of 0xcc
Allocated in leaks_overflow+0x12/0x40 [kmemgdb_leaks] age=0 cpu=0 pid=30
CPU: 0 PID: 30 Comm: sh Tainted: G    B      O       6.1.192 #1
Call Trace:
 <TASK>
 dump_stack_lvl+0x33/0x46
 </TASK>
FIX kmalloc-32: Restoring Right Redzone 0xffff888000b7c0a0-0xffff888000b7c0a7=0xcc
"""

WARN = """[   12.345678] WARNING: CPU: 0 PID: 1 at mm/slab_common.c:123 foo+0x1/0x2
[   12.345679] Modules linked in:
[   12.345679] CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.1.192 #1
[   12.345680] ---[ end trace 0000000000000001 ]---
[   12.345681] all fine afterwards
"""


def test_oops_is_one_report_to_its_end_trace():
    [report] = parse_kernel_reports(OOPS)
    assert report.kind == "oops" and report.title.startswith("BUG: kernel NULL pointer")
    assert (report.pid, report.comm) == (29, "insmod")
    assert report.text.splitlines()[-1].startswith("---[ end trace")


def test_slub_consistency_report_names_its_cache():
    [report] = parse_kernel_reports(SLUB)
    assert (report.kind, report.cache) == ("slub", "kmalloc-32")
    assert "Right Redzone overwritten" in report.title and report.comm == "sh"
    assert "FIX kmalloc-32" not in report.text


def test_warning_with_timestamps_and_json_round_trip():
    reports = parse_kernel_reports(WARN + OOPS)
    assert [r.kind for r in reports] == ["warning", "oops"]
    assert reports[0].title.startswith("WARNING: CPU: 0 PID: 1") and reports[0].comm == "swapper/0"
    assert KernelReport.from_json(reports[1].to_json()) == reports[1]


def test_quiet_console_has_no_reports():
    assert parse_kernel_reports("Linux version 6.1\nRun /init as init process\nBUGS: none\n") == []
