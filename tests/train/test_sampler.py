from contrastkit.train.sampler import no_duplicate_batches


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
