"""prefix_tree: the rows of prefixes and their tails, and the mask that keeps each tail to its prefix and itself."""
import torch

from tether.prefix_tree import tree_mask, tree_rows


def test_rows_place_each_tail_after_its_prefix_at_continued_positions():
    rows = tree_rows([([7, 8], [[1, 2], [3]]), ([9], [[4, 5, 6]])], pad_id=0)
    assert rows.input_ids.tolist() == [[7, 8, 1, 2, 3], [9, 4, 5, 6, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 3, 0]]
    assert rows.segments.tolist() == [[0, 0, 1, 1, 2], [0, 1, 1, 1, -1]]
    assert rows.spans == [(0, 2, 2), (0, 4, 1), (1, 1, 3)]


def test_mask_by_hand():
    # row [p p a a b]: prefix p, tails a and b; then row [p a a a pad]
    rows = tree_rows([([7, 8], [[1, 2], [3]]), ([9], [[4, 5, 6]])], pad_id=0)
    mask = tree_mask(rows.segments)
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0],
                                         [1, 1, 0, 0, 0],
                                         [1, 1, 1, 0, 0],
                                         [1, 1, 1, 1, 0],
                                         [1, 1, 0, 0, 1]]  # b sees the prefix and itself, not a
    assert mask[1, 0].int().tolist() == [[1, 0, 0, 0, 0],
                                         [1, 1, 0, 0, 0],
                                         [1, 1, 1, 0, 0],
                                         [1, 1, 1, 1, 0],
                                         [0, 0, 0, 0, 1]]  # padding sees itself only


def test_eager_mask_is_additive():
    rows = tree_rows([([7], [[1], [2]])], pad_id=0)
    mask = tree_mask(rows.segments, "eager", torch.float32)
    low = torch.finfo(torch.float32).min
    assert mask.dtype == torch.float32
    assert mask[0, 0].tolist() == [[0, low, low], [0, 0, low], [0, low, 0]]


def test_rows_by_prefix_groups_sorts_and_chunks():
    from tether.prefix_tree import rows_by_prefix

    sequences = [[7, 8, 1], [9, 4, 5, 6], [7, 8, 2, 3], [5, 1]]
    prefixes = [[7, 8], [9], [7, 8], [5]]
    widths = []

    def cut_after_first(w):  # records the widths it is asked to cut: ascending
        widths.append(w)
        return [1, len(w)]

    chunks = rows_by_prefix(sequences, prefixes, 0, cut_after_first)
    assert widths == [[2, 4, 5]]  # [5]+[1]; [9]+[4 5 6]; [7 8]+[1]+[2 3]
    assert [idx for idx, _ in chunks] == [[3], [1, 0, 2]]
    assert chunks[0][1].input_ids.tolist() == [[5, 1]]
    assert chunks[1][1].input_ids.tolist() == [[9, 4, 5, 6, 0], [7, 8, 1, 2, 3]]
    assert chunks[1][1].spans == [(0, 1, 3), (1, 2, 1), (1, 3, 2)]
