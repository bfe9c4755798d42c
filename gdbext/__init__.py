"""kmemgdb's GDB extension: kernel memory checking done from the debugger.

`gdbext.core` is pure logic (ints, bytes, small objects) and never imports gdb;
`gdbext.gdb` is the glue and the only package that does.
"""
