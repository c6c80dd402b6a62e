import random

from contrastkit.train.sampler import _batches_of, no_duplicate_batches


def test_no_text_repeats_within_a_batch_and_every_example_is_used():
    # examples 0..19; every 4th shares its positive with the next one
    texts = [(f"q{i}", f"d{i - i % 2 if i % 4 < 2 else i}") for i in range(20)]
    batches = no_duplicate_batches(texts, batch_size=4, seed=0, epoch=0, drop_last=False)
    for batch in batches:
        seen = [t for i in batch for t in texts[i]]
        assert len(seen) == len(set(seen)), batch
    assert sorted(i for b in batches for i in b) == list(range(20))


def test_deterministic_in_seed_and_epoch_and_shuffled_between_epochs():
    texts = [(f"q{i}", f"d{i}") for i in range(50)]
    a = no_duplicate_batches(texts, 8, seed=1, epoch=0)
    assert a == no_duplicate_batches(texts, 8, seed=1, epoch=0)
    assert a != no_duplicate_batches(texts, 8, seed=1, epoch=1)
    assert a != no_duplicate_batches(texts, 8, seed=2, epoch=0)
    assert all(len(b) == 8 for b in a) and len(a) == 6  # drop_last drops the 2 left over


def test_clashing_examples_are_deferred_not_lost():
    texts = [("same", f"d{i}") for i in range(3)] + [(f"q{i}", f"e{i}") for i in range(3)]
    batches = no_duplicate_batches(texts, 2, seed=0, epoch=0, drop_last=False)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(sum(texts[i][0] == "same" for i in b) <= 1 for b in batches)


def test_sources_keep_batches_single_source():
    texts = [(f"q{i}", f"d{i}") for i in range(24)]
    sources = ["a" if i < 12 else "b" for i in range(24)]
    batches = no_duplicate_batches(texts, 4, seed=0, epoch=0, sources=sources)
    assert len(batches) == 6
    assert all(len({sources[i] for i in b}) == 1 for b in batches)


def _scan_everything(pool, texts_per_example, batch_size, drop_last):
    """The sampler's definition, written the slow way: each batch scans every example still left."""
    remaining, batches = list(pool), []
    while remaining:
        batch, seen, deferred = [], set(), []
        for i in remaining:
            texts = set(texts_per_example[i])
            if len(batch) < batch_size and not texts & seen:
                batch.append(i)
                seen |= texts
            else:
                deferred.append(i)
        if len(batch) < batch_size and drop_last:
            break
        batches.append(batch)
        remaining = deferred
    return batches


def test_same_batches_as_scanning_every_example_left():
    rng = random.Random(0)
    for _ in range(200):
        vocabulary = rng.randrange(1, 40)
        texts = [tuple(f"t{rng.randrange(vocabulary)}" for _ in range(rng.randrange(1, 4)))
                 for _ in range(rng.randrange(1, 120))]
        pool = rng.sample(range(len(texts)), len(texts))
        for batch_size in (1, 3, 8):
            for drop_last in (True, False):
                assert _batches_of(pool, texts, batch_size, drop_last) == \
                    _scan_everything(pool, texts, batch_size, drop_last)


class _CountingTexts(list):
    reads = 0

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i)


def test_a_pass_reads_each_example_about_once():
    # 20,000 pairs, a few clashing: scanning every example left for each batch read ~3 million
    texts = _CountingTexts((f"q{i % 19_990}", f"d{i}") for i in range(20_000))
    batches = no_duplicate_batches(texts, 64, seed=0, epoch=0)
    assert len(batches) == 20_000 // 64
    assert texts.reads < 2 * len(texts)


def _queries_with_many_documents(n_queries: int = 10, docs_each: int = 4) -> list[tuple[str, str]]:
    """Each query paired with several documents (Cranfield's shape): the end of a pass cannot fill a batch."""
    pairs = [(f"q{q}", f"d{q}-{k}") for q in range(n_queries) for k in range(docs_each)]
    pairs += [("q0", f"d0-extra{k}") for k in range(12)]  # q0 in 16 pairs, the others in 36: at most 5 batches of 8
    return pairs


def test_refill_gives_an_epoch_of_len_over_batch_size_full_batches():
    texts = _queries_with_many_documents()  # 52 pairs, batch 8: 6 wanted
    plain = no_duplicate_batches(texts, 8, seed=0, epoch=0)
    refilled = no_duplicate_batches(texts, 8, seed=0, epoch=0, refill=True)
    assert len(plain) < len(texts) // 8 == len(refilled)
    assert refilled[:len(plain)] == plain  # the first pass is untouched; refills come after it
    for batch in refilled:
        assert len(batch) == 8
        seen = [t for i in batch for t in texts[i]]
        assert len(seen) == len(set(seen)), batch  # still no text twice in a batch
    assert refilled == no_duplicate_batches(texts, 8, seed=0, epoch=0, refill=True)  # deterministic


def test_refill_changes_nothing_when_the_pass_fills_the_epoch_or_without_drop_last():
    texts = [(f"q{i}", f"d{i}") for i in range(50)]
    assert no_duplicate_batches(texts, 8, seed=3, epoch=1, refill=True) == no_duplicate_batches(texts, 8, seed=3, epoch=1)
    many = _queries_with_many_documents()
    assert (no_duplicate_batches(many, 8, seed=0, epoch=0, drop_last=False, refill=True)
            == no_duplicate_batches(many, 8, seed=0, epoch=0, drop_last=False))


def test_refill_works_source_by_source():
    texts = _queries_with_many_documents() + [(f"x{i}", f"y{i}") for i in range(16)]
    sources = ["a"] * 52 + ["b"] * 16
    batches = no_duplicate_batches(texts, 8, seed=0, epoch=0, sources=sources, refill=True)
    assert sorted(sources[b[0]] for b in batches) == ["a"] * 6 + ["b"] * 2
    assert all(len({sources[i] for i in b}) == 1 for b in batches)


def test_batches_of_different_sources_are_shuffled_together_deterministically():
    texts = [(f"q{i}", f"d{i}") for i in range(80)]
    sources = ["a"] * 40 + ["b"] * 40  # 10 batches of 4 each
    orders = []
    for seed in range(3):
        batches = no_duplicate_batches(texts, 4, seed=seed, epoch=0, sources=sources)
        assert batches == no_duplicate_batches(texts, 4, seed=seed, epoch=0, sources=sources)
        order = [sources[b[0]] for b in batches]
        assert sorted(order) == ["a"] * 10 + ["b"] * 10
        # not one source's batches and then the other's: 2 of the C(20, 10) = 184,756 orders
        assert order not in (["a"] * 10 + ["b"] * 10, ["b"] * 10 + ["a"] * 10), order
        orders.append(order)
    assert len({tuple(o) for o in orders}) > 1  # and the order follows the seed
