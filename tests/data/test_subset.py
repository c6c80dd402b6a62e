from contrastkit.data.subset import sample_indices


def test_a_seeded_subset_is_fixed_sorted_distinct_and_bounded():
    a = sample_indices(100, 10, seed=3)
    assert a == sample_indices(100, 10, seed=3) and a != sample_indices(100, 10, seed=4)
    assert a == sorted(set(a)) and len(a) == 10 and all(0 <= i < 100 for i in a)
    assert sample_indices(5, 10, seed=0) == [0, 1, 2, 3, 4]  # asking for more than there is: all of it
