"""The config check run before booting a kernel kmemgdb did not build."""
import pytest

from kmemgdb.kernel import CONFIG_DIR, parse_config
from kmemgdb.kernelcheck import ESSENTIAL, FEATURES, KernelConfigError, check_config, require


def our_config() -> dict[str, str]:
    config = {}
    for frag in sorted(CONFIG_DIR.glob("*.config")):
        config.update(parse_config(frag.read_text()))
    return config


def test_our_fragments_pass_everything():
    check = check_config(our_config())
    assert check.missing_essential == [] and check.disabled == {}
    require(check, "ours", ["--kmemleak", "--kmemcheck", "--reference-kmemleak", "--insmod"])


def test_a_stock_like_config_lists_what_it_turns_off():
    config = our_config()
    for off in ("CONFIG_DEBUG_PAGEALLOC", "CONFIG_DEBUG_KMEMLEAK"):
        config[off] = "n"
    check = check_config(config)
    assert check.missing_essential == []
    assert set(check.disabled) == {f for f in FEATURES if f.startswith(("kmemcheck", "kmemleak annotations"))}
    assert "off: kmemcheck (a 4 KiB direct map: debug_pagealloc=on): needs CONFIG_DEBUG_PAGEALLOC=y" in check.describe()
    require(check, "stock", ["--kmemleak", "--insmod"])          # what it can still do
    with pytest.raises(KernelConfigError) as exc:
        require(check, "stock", ["--kmemleak", "--kmemcheck", "--reference-kmemleak"])
    message = str(exc.value)
    assert "--kmemcheck needs CONFIG_DEBUG_PAGEALLOC=y" in message
    assert "--reference-kmemleak needs CONFIG_DEBUG_KMEMLEAK=y" in message
    assert "--kmemleak" not in message.replace("--reference-kmemleak", "")


@pytest.mark.parametrize("change, expected", [
    ({"CONFIG_DEBUG_INFO": "n"}, "CONFIG_DEBUG_INFO (DWARF"),
    ({"CONFIG_DEBUG_INFO_REDUCED": "y"}, "CONFIG_DEBUG_INFO_REDUCED=n"),
    ({"CONFIG_SERIAL_8250": "n"}, "CONFIG_SERIAL_8250 (the console"),
])
def test_missing_essentials_refuse_every_run(change, expected):
    check = check_config({**our_config(), **change})
    with pytest.raises(KernelConfigError, match="needed by every run") as exc:
        require(check, "k", [])
    assert expected in str(exc.value)


def test_modules_count_as_enabled():
    assert check_config({**our_config(), "CONFIG_DEBUG_KMEMLEAK": "m"}).disabled == {}
    assert set(ESSENTIAL) <= set(our_config())
