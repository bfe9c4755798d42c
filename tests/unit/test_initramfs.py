import subprocess

from kmemgdb.initramfs import CpioEntry, guest_entries, newc_archive


def test_archive_lists_with_cpio(tmp_path):
    archive = newc_archive(guest_entries(b"\x7fELFbusybox", {"hello.ko": b"ko-bytes"}))
    assert len(archive) % 4 == 0
    res = subprocess.run(["cpio", "-it", "--quiet"], input=archive, capture_output=True, check=True)
    names = res.stdout.decode().split()
    for name in ("init", "bin/busybox", "dev/console", "modules/hello.ko", "proc", "sys"):
        assert name in names


def test_file_contents_and_device_node(tmp_path):
    archive = newc_archive([CpioEntry("a", 0o100644, b"12345"), CpioEntry("dev/console", 0o20600,
                                                                           rdev=(5, 1))])
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], input=archive,
                   cwd=tmp_path, check=False, capture_output=True)
    assert (tmp_path / "a").read_bytes() == b"12345"
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=archive, capture_output=True).stdout
    assert b"5,   1" in listing or b"5, 1" in listing
