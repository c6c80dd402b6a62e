"""Two gloo processes on this CPU must train exactly like one process on the same global batches."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from _support import build_tiny_bert_folder, make_pairs, write_pairs


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory):
    return build_tiny_bert_folder(tmp_path_factory.mktemp("tiny-no-dropout"), dropout=0.0)


def train_args(model, data, out, *extra):
    return ["-m", "contrastkit.cli", "train", "--model", str(model), "--data", str(data), "--output", str(out),
            "--set", "batch_size=8", "--set", "lr=1e-3", "--set", "warmup_ratio=0", "--set", "dtype=float64",
            "--set", "show_progress=false", "--set", "max_seq_length=32", "--set", "report=false",
            "--set", "health_every=1", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("mode", [["--set", "mini_batch_size=2"], ["--set", "chunk_size=3"]])
def test_two_ranks_equal_one_process(no_dropout_model, tmp_path, mode):
    pairs = make_pairs(32, negatives=1)
    for i in range(32):  # most pairs bring no hard negative: ranks gather unequal counts, a rank's
        if i % 6:        # shard may bring none (an empty group), and a whole batch may bring none
            pairs[i].negatives = []
    data = write_pairs(tmp_path / "pairs.jsonl", pairs)
    extra = ["--set", "max_steps=3", "--set", "num_hard_negatives=1", *mode]
    single = subprocess.run([sys.executable, *train_args(no_dropout_model, data, tmp_path / "one", *extra)],
                            env=ENV, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *train_args(no_dropout_model, data, tmp_path / "two", *extra)],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    start = load_file(no_dropout_model / "model.safetensors")
    assert a.keys() == b.keys() and a["embeddings.word_embeddings.weight"].dtype == torch.float64
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    assert any((a[n] - start[n].double()).abs().max() > 1e-4 for n in a)  # the weights did move
    logs = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3]  # only rank 0 writes the log
    assert [r["step"] for r in logs if "health" in r] == [0, 1, 2, 3]  # health too: rank 0 only, once each


def test_a_killed_rank_makes_the_other_exit_with_a_clear_error(no_dropout_model, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", make_pairs(64))
    out = tmp_path / "run"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, *train_args(no_dropout_model, data, out, "--set",
                                                                   "max_steps=100000", "--set", "checkpoint_every=100000")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    log = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-2000:]
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
        _, err = procs[0].communicate(timeout=60)
    finally:
        procs[0].kill()
    assert time.time() - killed_at < 60
    assert procs[0].returncode not in (0, None)
    assert "lost rank 1" in err, err[-2000:]
    assert "--resume" in err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_refuse_drop_last_false_before_training(no_dropout_model, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", make_pairs(13))  # the last batch of 5 cannot be split in two
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *train_args(no_dropout_model, data, tmp_path / "two", "--set", "drop_last=false")],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode != 0 and "drop_last: false with 2 ranks" in two.stderr
    assert not (tmp_path / "two" / "metrics.jsonl").exists()
