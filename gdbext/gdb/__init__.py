"""The gdb glue of kmemgdb: the only package that imports gdb.

register() adds the settings and commands; nothing touches the target at import time.
"""


def register() -> None:
    from . import attach, session, settings
    from .commands import kmem, kmemleak

    settings.register()
    session.register_events()
    attach.register_events()
    kmem.register()
    kmemleak.register()
