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

# The refused request: look its address up in the report and ask about it and its payload.
python
import json
report = json.loads(gdb.execute("kmemleak report --all --json", to_string=True))
for leak in report["leaks"]:
    if any(frame["module"] == "mydriver" for frame in leak["backtrace"]):
        gdb.execute(f"kmemleak why {leak['address']:#x}")
        gdb.execute(f"kmemleak dump={leak['address']:#x}")
end

# Clean up the live request, so the module leaves nothing behind.
guest echo flush > /sys/kernel/debug/mydriver/cmd
