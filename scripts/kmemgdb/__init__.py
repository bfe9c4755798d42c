"""kmemgdb's host-side tooling: guest kernel and initramfs builds and the batch command."""
