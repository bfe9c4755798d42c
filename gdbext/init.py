"""gdb init script of kmemgdb: `gdb -x gdbext/init.py vmlinux`.

Puts the project's virtualenv (made from /usr/bin/python3, the interpreter gdb embeds) and the
repository on gdb's sys.path, then registers the commands. KMEMGDB_VENV overrides the venv.
"""
import glob
import os
import site
import sys

_repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_venv = os.environ.get("KMEMGDB_VENV") or os.path.join(_repo, ".venv")
for _sp in glob.glob(os.path.join(_venv, "lib", "python3*", "site-packages")):
    site.addsitedir(_sp)
if _repo not in sys.path:
    sys.path.insert(0, _repo)

import gdbext.gdb  # noqa: E402

gdbext.gdb.register()
