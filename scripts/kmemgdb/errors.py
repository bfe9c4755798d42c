"""Errors the command line turns into one line on stderr and exit status 2."""


class KmemgdbError(Exception):
    """A failure the user can act on; str() is the whole message."""


class BuildError(KmemgdbError):
    """A kernel, module or initramfs build failed."""
