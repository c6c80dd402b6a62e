import pytest
import torch

from contrastkit.pooling import cls_pool, last_token_pool, mean_pool, pool


def _naive(token_embeddings, mask, mode):
    rows = []
    for h, m in zip(token_embeddings, mask):
        real = [t for t in range(len(m)) if m[t] == 1]
        if mode == "mean":
            rows.append(torch.stack([h[t] for t in real]).mean(0))
        elif mode == "cls":
            rows.append(h[0])
        else:
            rows.append(h[real[-1]])
    return torch.stack(rows)


@pytest.mark.parametrize("mode", ["mean", "cls", "last"])
def test_pool_matches_naive_loop_right_padding(mode):
    torch.manual_seed(0)
    h = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    torch.testing.assert_close(pool(h, mask, mode), _naive(h, mask, mode))


def test_last_token_pool_left_padding():
    h = torch.arange(2 * 4 * 1, dtype=torch.float64).reshape(2, 4, 1)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_pool(h, mask).flatten().tolist() == [3.0, 7.0]


def test_mean_pool_ignores_padding_values():
    h = torch.zeros(1, 3, 2)
    h[0, 0] = torch.tensor([2.0, 4.0])
    h[0, 2] = torch.tensor([1000.0, 1000.0])  # padding: must not count
    assert mean_pool(h, torch.tensor([[1, 0, 0]])).tolist() == [[2.0, 4.0]]
    assert cls_pool(h, torch.tensor([[1, 0, 0]])).tolist() == [[2.0, 4.0]]


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown pooling mode 'max'"):
        pool(torch.zeros(1, 1, 1), torch.ones(1, 1), "max")
