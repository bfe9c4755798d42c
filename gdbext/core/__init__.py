"""Pure logic of kmemgdb: importable and testable without gdb."""
