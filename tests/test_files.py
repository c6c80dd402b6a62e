import os
import stat
from pathlib import Path

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


def test_a_model_save_moves_old_weights_out_first_and_new_weights_last(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"old weights")
    (run / "config.json").write_text("old")
    (run / ".save-partial-99999").mkdir()  # what a killed save left
    (run / ".save-partial-99999" / "model.safetensors").write_bytes(b"x" * 1000)
    moves = []
    real_replace = os.replace

    def spy(src, dst):
        moves.append((Path(dst).name, Path(run / "model.safetensors").exists()))
        real_replace(src, dst)

    def save(folder):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"new weights")
        (folder / "config.json").write_text("new")

    import contrastkit.files as files
    original = files.os.replace
    files.os.replace = spy
    try:
        save_files_whole(run, save)
    finally:
        files.os.replace = original
    # config.json moved while no weights were there (a kill then: "no .safetensors weights", not a mix)
    assert moves == [("config.json", False), ("model.safetensors", False)]
    assert (run / "model.safetensors").read_bytes() == b"new weights"
    assert not any(p.name.startswith(".save-partial") for p in run.iterdir())  # the stale one too


def test_a_full_disk_in_a_checkpoint_is_one_error_and_leaves_no_half_checkpoint(tmp_path):
    from contrastkit.train.checkpoint import write_atomically

    def full(folder):
        (folder / "trainer.pt").write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")

    with pytest.raises(OSError, match="cannot write .*checkpoint-00000002: .*PytorchStreamWriter failed"):
        write_atomically(tmp_path / "checkpoints" / "checkpoint-00000002", full)
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_saved_models_and_checkpoints_get_the_umasks_mode(tmp_path, tiny_model_dir):
    from contrastkit.encoder import Encoder
    from contrastkit.train.checkpoint import write_atomically

    encoder = Encoder.from_pretrained(tiny_model_dir)
    old = os.umask(0o022)
    try:
        save_files_whole(tmp_path / "run", encoder.save)
        write_atomically(tmp_path / "ckpt", lambda folder: encoder.save(folder / "model"))
    finally:
        os.umask(old)
    for weights in (tmp_path / "run" / "model.safetensors", tmp_path / "ckpt" / "model" / "model.safetensors"):
        assert stat.S_IMODE(weights.stat().st_mode) == 0o644


def test_a_full_disk_under_an_index_is_one_error_naming_it(tmp_path, monkeypatch):
    import faiss

    def full(index, name):
        open(name, "wb").write(b"half")
        raise RuntimeError("Error in faiss::FileIOWriter: fwrite failed: No space left on device")

    monkeypatch.setattr(faiss, "write_index", full)
    with pytest.raises(OSError, match=r"cannot write .*index.faiss: .*No space left on device"):
        VectorIndex.build(np.eye(4, dtype=np.float32)).save(tmp_path / "index.faiss")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_hidden_file_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has ended
    (tmp_path / f".e.npy.partial-{dead}").write_bytes(b"half")
    (tmp_path / f".e.npy.partial-{os.getpid()}x").write_bytes(b"not ours")  # not a pid: left alone
    write_text_whole(tmp_path / "e.npy", "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".e.npy.partial-{os.getpid()}x", "e.npy"]


def test_a_run_never_writes_through_a_link_someone_put_in_its_output_folder(tmp_path, tiny_model_dir):
    """A link named .contrastkit.lock or metrics.jsonl in an output folder others may write to had the
    run overwrite the file it pointed at (the victim's notes held "pid ..." and the training log)."""
    from contrastkit.encoder import Encoder
    from contrastkit.files import run_lock
    from contrastkit.train import TrainConfig, Trainer

    from _support import make_pairs

    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    out = tmp_path / "shared"
    out.mkdir()
    (out / ".contrastkit.lock").symlink_to(notes)
    with pytest.raises(OSError, match=r"\.contrastkit\.lock is a symbolic link: not written through"):
        with run_lock(out):
            pass
    (out / ".contrastkit.lock").unlink()
    (out / "metrics.jsonl").symlink_to(notes)
    config = TrainConfig(data="unused", output_dir=str(out), batch_size=8, max_steps=1, show_progress=False,
                         report=False, health_sample=0)
    with pytest.raises(OSError, match=r"metrics\.jsonl is a symbolic link"):
        Trainer(config, Encoder.from_pretrained(tiny_model_dir, max_seq_length=32), make_pairs()).train()
    assert notes.read_text() == "mine\n"


def test_a_folder_save_uses_a_hidden_folder_no_one_could_have_made_first(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / f".save-partial-{os.getpid()}").symlink_to(elsewhere, target_is_directory=True)
    save_files_whole(out, lambda folder: folder.mkdir() or (folder / "a.json").write_text("{}"))
    assert (out / "a.json").read_text() == "{}" and not list(elsewhere.iterdir())


def test_a_killed_runs_hidden_file_under_this_same_pid_does_not_block_the_write(tmp_path):
    """Containers reuse pids: the hidden file a killed run left has this process's name, and the
    exclusive open failed with "File exists"."""
    (tmp_path / f".m.json.partial-{os.getpid()}").write_text("half")
    write_text_whole(tmp_path / "m.json", "{}")
    assert (tmp_path / "m.json").read_text() == "{}" and len(list(tmp_path.iterdir())) == 1
