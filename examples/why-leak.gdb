# A `why` investigation: why is one object a leak, and why is another one not?
# run: kmemgdb gdb --batch --insmod mydriver.ko -x examples/why-leak.gdb

kmemleak scan
kmemleak clear
guest insmod /modules/mydriver.ko
guest echo submit 8 > /sys/kernel/debug/mydriver/cmd
guest echo submit 100 > /sys/kernel/debug/mydriver/cmd || true
kmemleak scan

# The queued request is alive: the chain from a root (the module's list head) to it.
# mydriver_reqs is the module's static list; its symbols were loaded by themselves at insmod.
kmemleak why mydriver_reqs.next

# The refused request: look its address up in the report, ask about it, and about its payload
# (read through the module's own type: gdb knows `struct mydriver_req` from its DWARF).
python
import json
report = json.loads(gdb.execute("kmemleak report --json", to_string=True))
for leak in report["leaks"]:
    if leak["kind"] == "direct" and any(f["module"] == "mydriver" for f in leak["backtrace"]):
        gdb.execute(f"kmemleak why {leak['address']:#x}")
        gdb.execute(f"kmemleak dump={leak['address']:#x}")
        req = gdb.parse_and_eval(f"(struct mydriver_req *) {leak['address']:#x}")
        gdb.execute(f"kmemleak why {int(req['payload']):#x}")
end

# Clean up the live request, so the module leaves nothing behind.
guest echo flush > /sys/kernel/debug/mydriver/cmd
