"""What --resume refuses, passes over or starts afresh from, and one run at a time in a folder."""

import json
import shutil
import threading

import pytest
from safetensors.torch import load_file

from contrastkit.data import Pair
from contrastkit.encoder import Encoder
from contrastkit.errors import ConfigError
from contrastkit.train import TrainConfig, Trainer
from contrastkit.train.checkpoint import list_checkpoints

from _support import make_pairs


def config(tmp_path, **kw):
    base = dict(data="unused", output_dir=str(tmp_path / "run"), batch_size=8, lr=1e-3, warmup_ratio=0.0,
                max_steps=4, checkpoint_every=2, show_progress=False, seed=3, report=False, health_sample=0)
    base.update(kw)
    return TrainConfig(**base)


def run(tmp_path, model_dir, pairs=None, resume=False, **kw):
    return Trainer(config(tmp_path, **kw), Encoder.from_pretrained(model_dir, max_seq_length=32),
                   pairs or make_pairs()).train(resume=resume)


def steps_logged(tmp_path):
    return [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("change, message", [
    (dict(lr=5e-4), "lr: 0.001 then, 0.0005 now"),
    (dict(seed=7), "seed: 3 then, 7 now"),
    (dict(temperature=0.5), "temperature: 0.05 then, 0.5 now"),
])
def test_resuming_with_other_training_settings_is_refused(tiny_model_dir, tmp_path, change, message):
    run(tmp_path, tiny_model_dir)
    kept = (tmp_path / "run" / "train_config.yaml").read_bytes()
    with pytest.raises(ConfigError, match=f"settings differ from the checkpoint's .*{message}"):
        run(tmp_path, tiny_model_dir, resume=True, **change)
    assert (tmp_path / "run" / "train_config.yaml").read_bytes() == kept
    run(tmp_path, tiny_model_dir, resume=True, log_every=2, checkpoint_every=1)  # what it shows and keeps may change


def test_a_run_saved_with_settings_its_loss_ignored_resumes_without_them(tiny_model_dir, tmp_path):
    """Earlier versions accepted temperature: 0.07 with the triplet loss (and ignored it); the config
    check now refuses it, and the checkpoint must not then refuse the config without it."""
    import json

    pairs = make_pairs(negatives=1)
    run(tmp_path, tiny_model_dir, pairs=pairs, loss="triplet", num_hard_negatives=1)
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    state = json.loads((newest / "trainer_state.json").read_text())
    state["config"].update(temperature=0.07, similarity="dot")  # as an earlier version saved them
    (newest / "trainer_state.json").write_text(json.dumps(state))
    run(tmp_path, tiny_model_dir, pairs=pairs, resume=True, loss="triplet", num_hard_negatives=1)
    with pytest.raises(ConfigError, match="margin: 0.5 then, 0.3 now"):  # what it trained with still counts
        run(tmp_path, tiny_model_dir, pairs=pairs, resume=True, loss="triplet", num_hard_negatives=1, margin=0.3)


def test_resuming_on_other_data_is_refused(tiny_model_dir, tmp_path):
    run(tmp_path, tiny_model_dir)
    other = [Pair(p.anchor + " again", p.positive) for p in make_pairs()]
    with pytest.raises(ConfigError, match="made on other training data"):
        run(tmp_path, tiny_model_dir, pairs=other, resume=True)


def test_resuming_in_another_precision_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    """`bf16: null` follows the hardware: a run resumed on a machine that resolves it otherwise would
    finish in another precision than it began in, and its environment.json would name only one."""
    monkeypatch.setenv("CONTRASTKIT_NATIVE_BF16", "0")
    run(tmp_path, tiny_model_dir, bf16=None)
    monkeypatch.setenv("CONTRASTKIT_NATIVE_BF16", "1")
    with pytest.raises(ConfigError, match="trained in full precision, this run would train in bf16 autocast .*"
                                          "set bf16: false to resume it"):
        run(tmp_path, tiny_model_dir, bf16=None, resume=True)
    run(tmp_path, tiny_model_dir, bf16=False, resume=True)  # said explicitly: bf16 is not a setting that changed


def test_a_checkpoint_with_a_pickled_object_is_refused_in_plain_words(tiny_model_dir, tmp_path):
    """torch's own message, cut at 200 characters, ended in its advice to load with weights_only=False."""
    import os

    import torch

    class Payload:
        def __reduce__(self):
            return os.system, ("echo never",)

    run(tmp_path, tiny_model_dir, max_steps=4)
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    torch.save({"optimizer": Payload()}, newest / "trainer.pt")  # as a tampered checkpoint would be
    with pytest.warns(UserWarning) as caught:
        run(tmp_path, tiny_model_dir, max_steps=4, resume=True)
    said = " ".join(str(w.message) for w in caught)
    assert "trainer.pt holds pickled objects other than tensors (posix.system): refused, never loaded" in said
    assert "weights_only" not in said


def test_a_damaged_newest_checkpoint_is_passed_over_for_the_one_before(tiny_model_dir, tmp_path):
    run(tmp_path, tiny_model_dir, max_steps=6)
    straight = load_file(tmp_path / "run" / "model.safetensors")
    older, newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-2:]
    (newest / "trainer.pt").write_bytes((newest / "trainer.pt").read_bytes()[:100])  # cut short
    with pytest.warns(UserWarning, match=f"{newest.name} cannot be read .*resuming from the checkpoint before"):
        run(tmp_path, tiny_model_dir, max_steps=6, resume=True)
    again = load_file(tmp_path / "run" / "model.safetensors")
    assert all((again[k] == straight[k]).all() for k in straight)  # steps 5 and 6 done again, the same
    weights = older / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    newest_now = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    shutil.rmtree(newest_now)
    with pytest.warns(UserWarning, match=f"{older.name} cannot be read"):
        run(tmp_path, tiny_model_dir, max_steps=6, resume=True)


def test_a_copied_checkpoint_folder_is_not_a_checkpoint(tiny_model_dir, tmp_path):
    run(tmp_path, tiny_model_dir)
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.copytree(checkpoints / "checkpoint-00000002", checkpoints / "checkpoint-00000002 (copy)")
    shutil.copytree(checkpoints / "checkpoint-00000004", checkpoints / "checkpoint-00000004.bak")
    assert [p.name for p in list_checkpoints(checkpoints)] == ["checkpoint-00000002", "checkpoint-00000004"]
    run(tmp_path, tiny_model_dir, resume=True)
    run(tmp_path, tiny_model_dir)


def test_resume_without_a_checkpoint_is_a_fresh_run_not_an_appended_log(tiny_model_dir, tmp_path):
    run(tmp_path, tiny_model_dir, checkpoint_every=None)
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []
    with pytest.warns(UserWarning, match="--resume: no checkpoint in .* yet; training from the start"):
        run(tmp_path, tiny_model_dir, checkpoint_every=None, resume=True)  # said, not silent
    assert steps_logged(tmp_path) == [1, 2, 3, 4]  # not 1-4 twice


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_runs(tiny_model_dir, tmp_path):
    from contrastkit.files import run_lock

    held, release = threading.Event(), threading.Event()

    def first():
        with run_lock(tmp_path / "run"):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(30)
    try:
        with pytest.raises(ConfigError, match=r"is in use by another run \(pid \d+\)"):
            run(tmp_path, tiny_model_dir)
    finally:
        release.set()
        thread.join()
    run(tmp_path, tiny_model_dir)  # free again once the first is done
