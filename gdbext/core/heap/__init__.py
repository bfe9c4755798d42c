"""The guest's heap as kmemleak would track it, rebuilt from allocator state at scan time."""
