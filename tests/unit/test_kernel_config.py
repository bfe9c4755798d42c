from kmemgdb import kernel

REQUIRED = {  # what the issue asks of the default guest kernel
    "CONFIG_DEBUG_INFO": "y", "CONFIG_GDB_SCRIPTS": "y", "CONFIG_SLUB": "y", "CONFIG_SLUB_DEBUG": "y",
    "CONFIG_MODULES": "y", "CONFIG_MODULE_UNLOAD": "y", "CONFIG_DEBUG_FS": "y",
    "CONFIG_RANDOMIZE_BASE": "n", "CONFIG_FUNCTION_TRACER": "n", "CONFIG_CC_OPTIMIZE_FOR_SIZE": "n",
    "CONFIG_DEBUG_KMEMLEAK": "y", "CONFIG_DEBUG_KMEMLEAK_DEFAULT_OFF": "y",
    "CONFIG_DEBUG_KMEMLEAK_TEST": "m",
}


def all_fragment_options():
    merged = {}
    for frag in kernel.fragments():
        merged.update(kernel.parse_config(frag.read_text()))
    return merged


def test_fragments_ask_for_what_the_checkers_need():
    merged = all_fragment_options()
    assert {k: merged.get(k) for k in REQUIRED} == REQUIRED


def test_every_option_has_a_reason_above_it():
    for frag in kernel.fragments():
        lines = frag.read_text().splitlines()
        assert lines[0].startswith("#"), frag
        for i, line in enumerate(lines):
            if line.startswith("CONFIG_"):
                block = lines[:i]
                while block and block[-1].startswith("CONFIG_"):
                    block.pop()
                assert block and block[-1].startswith("#"), f"{frag.name}: {line} has no comment"


def test_parse_and_mismatch():
    final = kernel.parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\n")
    assert final == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "m"}
    assert kernel.config_mismatches({"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_D": "n"}, final) == []
    assert kernel.config_mismatches({"CONFIG_C": "y", "CONFIG_E": "y"}, final) == \
        ["CONFIG_C=y (got m)", "CONFIG_E=y (got n)"]


def test_build_key_follows_fragment_content(tmp_path):
    frag = tmp_path / "10-x.config"
    frag.write_text("# why\nCONFIG_A=y\n")
    key1 = kernel.build_key("6.1.192-2", [frag])
    assert kernel.build_key("6.1.192-2", [frag]) == key1
    frag.write_text("# why\nCONFIG_A=n\n")
    assert kernel.build_key("6.1.192-2", [frag]) != key1
    assert kernel.build_key("6.1.193-1", [frag]) != kernel.build_key("6.1.192-2", [frag])
