"""Guest launcher: QEMU argv building (pure) and process lifecycle with a captured console."""
