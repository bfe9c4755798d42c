"""gdb commands of kmemgdb: one module per command family."""
