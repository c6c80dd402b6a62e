"""Helpers shared by the test modules (a module, not a conftest: test files import it by name)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from contrastkit.data import Pair


def build_tiny_bert_folder(path: Path, *, seed: int = 0, dropout: float = 0.1, hidden_size: int = 32) -> Path:
    """Save a 2-layer, 32-wide (or `hidden_size`), 2-head randomly initialised BERT with the default model's
    tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from contrastkit.encoder import default_model_path

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True).save_pretrained(path)
    return path


TOPICS = ["wing lift", "shock wave", "heat transfer", "boundary layer", "jet noise", "panel flutter",
          "nozzle flow", "buckling shell", "hypersonic heating", "vortex sheet", "skin friction", "stall angle"]


def make_pairs(n=48, negatives=0):
    pairs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        other = TOPICS[(i + 5) % len(TOPICS)]
        pairs.append(Pair(anchor=f"what about {topic} case {i}", positive=f"a study of {topic} number {i}",
                          negatives=[f"a study of {other} number {i + k}" for k in range(negatives)]))
    return pairs


def write_pairs(path, pairs):
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in pairs))
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_beir(folder):
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(
        ["lift of thin wings", "jet engine noise", "shock waves in nozzles", "heat transfer in boundary layers"])])
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "wing lift"}, {"_id": "q2", "text": "engine noise"}])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td1\t2\n")
    return folder


# every figure of a report whose run recorded everything (tests/report)
REPORT_PLOTS = ["loss", "temperature", "lr", "throughput", "eval", "similarity-histograms", "alignment-uniformity",
                "similarity-over-steps"]
# HTML-looking text in the data: the report must show it as text, never run or parse it
NASTY_QUERY = 'wing lift <script>alert("x")</script> & drag'


def make_report_beir(folder: Path) -> Path:
    """Eight documents, four judged test queries, one with markup in its text."""
    (folder / "qrels").mkdir(parents=True)
    texts = ["lift of thin wings", "jet engine noise", "shock waves in nozzles", "heat transfer in boundary layers",
             "panel flutter at high speed", "buckling of thin shells", "vortex sheets behind wings", "skin friction"]
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(texts)])
    queries = [NASTY_QUERY, "engine noise", "flutter of panels", "friction on the skin"]
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": t} for i, t in enumerate(queries)])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\td6\t1\nq1\td1\t2\n"
                                               "q2\td4\t1\nq3\td7\t1\n")
    return folder


def naive_similarity(x: list[float], y: list[float], kind: str) -> float:
    """A similarity written from the docstrings, one pair of plain lists at a time (test reference)."""
    dot = sum(u * v for u, v in zip(x, y))
    if kind == "dot":
        return dot
    if kind == "cosine":
        return dot / math.sqrt(sum(u * u for u in x) * sum(v * v for v in y))
    return -math.sqrt(sum((u - v) ** 2 for u, v in zip(x, y)))


def assert_resumed_from(metrics: Path, checkpoint_step: int, total_steps: int) -> None:
    """A run's metrics.jsonl after a crash and a resume: every step logged once, in order. A "resume"
    that started again from step 1 logs step 1 twice (and would give the same final weights when
    training is repeatable, so the weights alone cannot tell); one that kept the records the crashed
    run logged after its checkpoint logs those steps twice."""
    steps = [r["step"] for r in map(json.loads, metrics.read_text().splitlines()) if "eval" not in r and "health" not in r]
    assert steps.count(1) == 1, f"step 1 was logged {steps.count(1)} times: the resume started again"
    assert steps == list(range(1, total_steps + 1)), f"resumed from step {checkpoint_step}: {steps}"


def record_chunk_sizes(monkeypatch, module) -> list:
    """Wrap `module`'s forward_chunks so each call's texts per forward is appended to the returned list."""
    real, seen = module.forward_chunks, []

    def spy(count, per_forward, lengths):
        seen.append(per_forward)
        return real(count, per_forward, lengths)
    monkeypatch.setattr(module, "forward_chunks", spy)
    return seen


def run_in_forked_child(work, path, seconds: float = 120) -> None:
    """Fork; the child runs work() and torch.saves its result to `path`, then exits without returning into
    pytest. Fails the test where the child hangs (`seconds`: a cold cache compiles numba's serial loops in
    the child) or does not exit cleanly."""
    import os
    import time

    import pytest

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.save(work(), path)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + seconds
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.WIFEXITED(done[1]) and os.WEXITSTATUS(done[1]) == 0, done[1]


def graph_nodes(node) -> set[str]:
    """The class names of every node of the autograd graph behind `node` (an output's grad_fn)."""
    seen, stack = set(), [node]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


def other_loops() -> tuple[torch.Tensor, ...]:
    """The other compiled loops on small inputs (below torch's parallel grain): the sub-layer exit
    (fast_layer_norm) and the feed-forward's bias + GELU (fast_gelu), forward and backward, and the
    attention layout copies (packing)."""
    from torch import nn

    from contrastkit.fast_dropout import FastDropout
    from contrastkit.fast_gelu import _BiasGelu
    from contrastkit.fast_layer_norm import dropout_add_layer_norm
    from contrastkit.packing import _HeadsToPacked, _PackedToHeads, plan_packing

    generator = torch.Generator().manual_seed(4)
    a = torch.randn(20, 48, generator=generator).bfloat16().requires_grad_()
    x = torch.randn(20, 48, generator=generator)
    torch.manual_seed(2)
    y = dropout_add_layer_norm(a, x, nn.LayerNorm(48), FastDropout(0.3).train())
    y.backward(torch.ones_like(y))
    (slab,) = plan_packing([[1] * n for n in (5, 3, 2)]).slabs
    rows = torch.randn(10, 24, generator=generator)
    q, k, v = _PackedToHeads.apply(rows, slab, 3, 2, 4)
    h, bias = torch.randn(20, 48, generator=generator).bfloat16().requires_grad_(), torch.randn(48).requires_grad_()
    gelu = _BiasGelu.apply(h, bias)
    gelu.backward(torch.ones_like(gelu))
    return y.detach(), a.grad, q, k, v, _HeadsToPacked.apply(v, slab), gelu.detach(), h.grad, bias.grad
