# A leak check around a module's test: what a CI job runs for a driver.
# run: kmemgdb gdb --batch --insmod mydriver.ko -x examples/leak-check.gdb
# Exit status 1: the report below has leaks (0 when the driver is fixed).

# What boot left behind is not the module's: scan, and mark it all as reported.
kmemleak scan
kmemleak clear

# The module's test, in the guest's shell (kmemleak needs no hooks meanwhile).
guest insmod /modules/mydriver.ko
guest echo submit 16 > /sys/kernel/debug/mydriver/cmd
# A request over 64 bytes is refused: the error path is what this test is after.
guest echo submit 100 > /sys/kernel/debug/mydriver/cmd || echo "refused, as expected"
guest rmmod mydriver

# Leaks: objects nothing points to any more, with their allocation backtraces.
kmemleak scan
kmemleak
