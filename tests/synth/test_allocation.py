import random

import pytest

from synth.allocation import label_at, labels_for, weyl_label


@pytest.mark.parametrize("weights,n,counts", [
    (((0, 0.2), (1, 0.8)), 1000, [200, 800]),
    (tuple((k, 0.2) for k in range(5)), 1000, [200] * 5),  # the 199/201 the issue reported
    (((0, 0.1), (1, 0.2), (2, 0.7)), 10, [1, 2, 7]),
    (((0, 1 / 3), (1, 1 / 3), (2, 1 / 3)), 999, [333, 333, 333]),
])
def test_whole_shares_are_exact(weights, n, counts):
    labels = labels_for(n, weights)
    assert [labels.count(k) for k, _ in weights] == counts


def test_every_prefix_is_within_its_quota():
    rng = random.Random(0)
    for _ in range(60):
        raw = [rng.random() ** 3 + 1e-3 for _ in range(rng.randint(2, 7))]
        weights = tuple((k, w / sum(raw)) for k, w in enumerate(raw))
        counts = [0] * len(weights)
        for m, label in enumerate(labels_for(1500, weights), 1):
            counts[label] += 1
            assert all(abs(c - m * w) < 1 for c, (_, w) in zip(counts, weights)), (m, counts)


def test_index_function_independent_of_n_and_query_order():
    weights = ((0, 0.3), (2, 0.7))  # class ids need not be contiguous
    whole = labels_for(500, weights)
    assert [label_at(i, weights) for i in reversed(range(500))][::-1] == whole
    assert labels_for(123, weights) == whole[:123]
    assert set(whole) == {0, 2}


def test_legacy_order_is_the_golden_ratio_sequence():
    weights = ((0, 0.5), (1, 0.5))
    assert labels_for(50, weights, "weyl") == [weyl_label(i, weights) for i in range(50)]
    with pytest.raises(ValueError, match="unknown label order"):
        label_at(0, weights, "zigzag")
