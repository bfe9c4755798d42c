# kmemcheck on one slab cache, with a suppression file for findings already accepted.
# run: kmemgdb gdb --batch --append debug_pagealloc=on --append slub_debug=U,mydriver_req --insmod mydriver.ko -x examples/kmemcheck-cache.gdb
# debug_pagealloc=on gives the 4 KiB direct map kmemcheck needs; slub_debug=U,CACHE adds
# allocation backtraces ("uninit was created at"). Exit status 1: kmemcheck reported.

# The cache exists once the module is loaded.
guest insmod /modules/mydriver.ko
kmemcheck track cache mydriver_req
kmemcheck suppress --file examples/mydriver.kmemcheck-supp
kmemcheck 1

guest echo submit 16 > /sys/kernel/debug/mydriver/cmd
guest echo dump > /sys/kernel/debug/mydriver/cmd
guest echo flush > /sys/kernel/debug/mydriver/cmd

kmemcheck 0
kmemcheck
kmemcheck report
