"""Files written whole or not at all (unet.atomic): checkpoints, masks, records, the outbox."""
import os

import pytest

from unet.atomic import write_atomically


def test_a_file_written_atomically_gets_a_plain_files_mode_and_its_content(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x")
    path = tmp_path / "sub" / "mask.png"                    # its folder is made
    write_atomically(path, lambda f: f.write(b"whole"))
    assert path.read_bytes() == b"whole"
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777   # not mkstemp's 0600
    assert sorted(p.name for p in path.parent.iterdir()) == ["mask.png"]     # no temporary left


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "record.json"
    write_atomically(path, lambda f: f.write(b"first"), durable=True)

    def half_then_fail(f):
        f.write(b"sec")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, half_then_fail)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
