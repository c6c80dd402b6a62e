import os
import stat

import numpy as np
import pytest

from contrastkit.data import Pair, write_pairs
from contrastkit.files import default_file_mode, save_files_whole, write_text_whole
from contrastkit.index import VectorIndex


def test_a_failed_write_names_the_file_asked_for_and_leaves_nothing(tmp_path):
    with pytest.raises(OSError, match="cannot write /proc/m.json"):
        write_text_whole("/proc/m.json", "{}")
    target = tmp_path / "m.json"
    target.write_text("old")

    def fails(handle):
        handle.write(b"half")
        raise RuntimeError("killed")

    from contrastkit.files import write_whole
    with pytest.raises(RuntimeError):
        write_whole(target, fails)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_a_folder_saved_file_by_file_keeps_other_files_and_never_shows_half_a_save(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("kept\n")
    (run / "model.safetensors").write_bytes(b"old weights")

    def save(folder):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"new weights")
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text("{}")

    assert save_files_whole(run, save) == run
    assert (run / "model.safetensors").read_bytes() == b"new weights"
    assert (run / "1_Pooling" / "config.json").read_text() == "{}" and (run / "metrics.jsonl").read_text() == "kept\n"
    assert not any(p.name.startswith(".save-partial") for p in run.iterdir())

    def killed(folder):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_files_whole(run, killed)
    assert (run / "model.safetensors").read_bytes() == b"new weights"  # the last whole save stands
    assert not any(p.name.startswith(".save-partial") for p in run.iterdir())


def test_written_files_get_the_umasks_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        assert default_file_mode() == 0o644
        paths = [write_pairs([Pair("a", "b")], tmp_path / "pairs.jsonl"), write_text_whole(tmp_path / "t.json", "{}"),
                 VectorIndex.build(np.eye(4, dtype=np.float32)).save(tmp_path / "index.faiss")]
    finally:
        os.umask(old)
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [0o644] * 3
