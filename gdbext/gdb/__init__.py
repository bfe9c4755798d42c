"""The gdb glue of kmemgdb: the only package that imports gdb.

register() adds the settings and commands; nothing touches the target at import time.
"""


def register() -> None:
    from . import attach, session, settings
    from . import unwind
    from .commands import guest, kmem, kmemcheck, kmemleak

    settings.register()
    session.register_events()
    attach.register_events()
    kmem.register()
    kmemleak.register()
    kmemcheck.register()
    guest.register()
    unwind.register()
