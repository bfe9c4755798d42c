import subprocess

import pytest

from gdbext.core.symbols import Symbol, SymbolError, SymbolTable, Symbolizer

C_SOURCE = """
int counter = 3;
static int helper(int x) { return x * counter; }
int entry(int x) { return helper(x) + 1; }
"""


def test_lookup_names_like_the_kernel():
    t = SymbolTable([Symbol("a", 0x1000, 0x20), Symbol("b", 0x1020, 0x10), Symbol("c", 0x2000, 0)], [])
    assert str(t.lookup(0x1005)) == "a+0x5/0x20"
    assert str(t.lookup(0x102F)) == "b+0xf/0x10"
    assert t.lookup(0x1030) is None                 # a gap after a sized symbol
    assert str(t.lookup(0x2004)) == "c+0x4/0x0"      # zero-sized: nearest before
    assert t.lookup(0xFFF) is None


def test_code_labels_name_assembly_but_not_functions():
    syms = [Symbol("_stext", 0x1000, 0), Symbol("startup_64", 0x1000, 0x40),
            Symbol("entry_SYSCALL_64_after_hwframe", 0x3000, 0)]
    t = SymbolTable(syms, [])
    assert str(t.lookup(0x1010)) == "startup_64+0x10/0x40"
    assert str(t.lookup(0x30AF)) == "entry_SYSCALL_64_after_hwframe+0xaf/0x0"
    assert t.lookup(0x3000 + 8192) is None          # too far past a size-less label


def test_module_init_alias_is_not_the_name():
    for order in (1, -1):
        syms = [Symbol("init_module", 0x5000, 0x40), Symbol("hello_init", 0x5000, 0x40)][::order]
        assert str(SymbolTable(syms, []).lookup(0x5010)) == "hello_init+0x10/0x40"


def test_symbolizer_prefers_module_ranges():
    kern = SymbolTable([Symbol("kfunc", 0xFFFFFFFF81000000, 0x100)], [])
    mod = SymbolTable([Symbol("mfunc", 0xFFFFFFFFA0000000, 0x40)], [], module="hello")
    s = Symbolizer(kern)
    s.add_module("hello", [(0xFFFFFFFFA0000000, 0xFFFFFFFFA0001000)], mod)
    loc = s.lookup(0xFFFFFFFFA0000010)
    assert (str(loc), loc.module) == ("mfunc+0x10/0x40", "hello")
    assert s.lookup(0xFFFFFFFF81000001).module is None
    s.remove_module("hello")            # unloaded: still named, unless another module loads there
    assert str(s.lookup(0xFFFFFFFFA0000010)) == "mfunc+0x10/0x40"
    other = SymbolTable([Symbol("ofunc", 0xFFFFFFFFA0000000, 0x80)], [], module="other")
    s.add_module("other", [(0xFFFFFFFFA0000000, 0xFFFFFFFFA0001000)], other)
    assert s.lookup(0xFFFFFFFFA0000010).module == "other"


def test_from_elf_with_section_bases(tmp_path):
    src = tmp_path / "m.c"
    src.write_text(C_SOURCE)
    obj = tmp_path / "m.o"
    subprocess.run(["gcc", "-O1", "-c", "-o", obj, src], check=True)
    table = SymbolTable.from_elf(obj, {".text": 0xFFFFFFFFA0001000, ".data": 0xFFFFFFFFA0003000},
                                 module="m")
    assert table.address("counter") == 0xFFFFFFFFA0003000
    entry = table.address("entry")
    assert 0xFFFFFFFFA0001000 <= entry < 0xFFFFFFFFA0002000
    assert table.lookup(entry + 1).symbol.name == "entry"
    with pytest.raises(SymbolError, match="no symbol 'missing' in module m"):
        table.address("missing")
    assert table.section(".data").addr == 0xFFFFFFFFA0003000


def test_a_module_loaded_over_an_old_init_area_takes_its_addresses():
    """Init areas are freed after init; a module loaded there later names those addresses."""
    first = SymbolTable([Symbol("first_init", 0x2000, 0x100)], [], "first")
    second = SymbolTable([Symbol("second_fn", 0x2000, 0x80)], [], "second")
    sym = Symbolizer(SymbolTable([], []))
    sym.add_module("first", [(0x1000, 0x1800), (0x2000, 0x3000)], first)
    sym.add_module("second", [(0x2000, 0x2800)], second)
    assert sym.lookup(0x2010).symbol.name == "second_fn"
    assert sym.modules["first"][0] == [(0x1000, 0x1800)]
