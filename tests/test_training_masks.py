"""Stage-1 inverse block masks, stage-2 simulation masks and the EAGLE unroll mask on small examples."""

import torch

from beagle.models.beagle.masks import block_index, has_context, inverse_block_mask, simulation_mask, window_positions
from beagle.models.eagle2.masks import causal_mask, unrolled_mask


def rows(mask):
    """[1, 1, Q, S] bool -> list of strings 'x.' per query row."""
    return ["".join("x" if v else "." for v in row) for row in mask[0, 0].tolist()]


def test_block_index_follows_the_formula():
    offsets = torch.tensor([0, 1, 2])
    blocks = block_index(torch.arange(8), 3, offsets)
    for row, offset in enumerate(offsets.tolist()):
        assert blocks[row].tolist() == [(p + 3 - offset) // 3 for p in range(8)]


def test_window_positions_with_offsets():
    assert window_positions(8, 3, torch.tensor([0]))[0].tolist() == [1, 2, 3, 1, 2, 3, 1, 2]
    assert window_positions(8, 3, torch.tensor([1]))[0].tolist() == [1, 1, 2, 3, 1, 2, 3, 1]
    assert window_positions(8, 3, torch.tensor([2]))[0].tolist() == [1, 2, 1, 2, 3, 1, 2, 3]
    assert has_context(8, 3, torch.tensor([2]))[0].tolist() == [False, False, True, True, True, True, True, True]


def test_inverse_block_mask_offset_zero():
    # blocks: [0 1 2] [3 4 5] [6 7]
    assert rows(inverse_block_mask(8, 3, torch.tensor([0]))) == [
        "........",
        "........",
        "........",
        "xxx.....",
        "xxx.....",
        "xxx.....",
        "xxxxxx..",
        "xxxxxx..",
    ]


def test_inverse_block_mask_with_offset_makes_a_partial_first_block():
    # offset 1 -> blocks: [0] [1 2 3] [4 5 6] [7]
    assert rows(inverse_block_mask(8, 3, torch.tensor([1]))) == [
        "........",
        "x.......",
        "x.......",
        "x.......",
        "xxxx....",
        "xxxx....",
        "xxxx....",
        "xxxxxxx.",
    ]


def test_inverse_block_mask_window_one_is_the_diagonal_shifted_causal_mask():
    mask = inverse_block_mask(6, 1, torch.tensor([0]))
    expected = torch.ones(6, 6, dtype=torch.bool).tril(-1)
    assert torch.equal(mask[0, 0], expected)


def test_inverse_block_mask_per_sequence_offsets():
    mask = inverse_block_mask(8, 3, torch.tensor([0, 1]))
    assert mask.shape == (2, 1, 8, 8)
    assert torch.equal(mask[1:], inverse_block_mask(8, 3, torch.tensor([1])))


def test_simulation_mask_step_by_step():
    offsets = torch.tensor([1])  # blocks [0] [1 2 3] [4 5 6] [7]
    true_rows = [
        "........",
        "x.......",
        "x.......",
        "x.......",
        "xxxx....",
        "xxxx....",
        "xxxx....",
        "xxxxxxx.",
    ]
    predicted = {
        1: ["........"] * 8,  # step 1 = the stage-1 mask
        2: [
            "........",
            "........",
            ".x......",  # wp 2 sees the predicted state of wp 1
            ".x......",  # wp 3 too (limited by the step)
            "........",
            "....x...",
            "....x...",
            "........",
        ],
        3: [
            "........",
            "........",
            ".x......",
            ".xx.....",  # wp 3 sees wp 1 and 2 predictions
            "........",
            "....x...",
            "....xx..",
            "........",
        ],
    }
    for step, buffer_rows in predicted.items():
        mask = simulation_mask(8, 3, offsets, step)
        assert mask.shape == (1, 1, 8, 16)
        assert rows(mask) == [t + p for t, p in zip(true_rows, buffer_rows)], step
        # the true half never changes with the step, and equals the stage-1 mask
        assert torch.equal(mask[..., :8], inverse_block_mask(8, 3, offsets))


def test_simulation_mask_selected_query_rows():
    offsets = torch.tensor([0, 2])
    full = simulation_mask(10, 4, offsets, 3)
    queries = torch.tensor([[2, 6], [4, 9]])
    selected = simulation_mask(10, 4, offsets, 3, queries)
    for b in range(2):
        for q in range(2):
            assert torch.equal(selected[b, 0, q], full[b, 0, queries[b, q]])


def test_causal_and_unrolled_masks():
    assert torch.equal(unrolled_mask(5, 1), causal_mask(5))
    assert rows(unrolled_mask(4, 2)) == [
        "....x...",
        "x....x..",
        "xx....x.",
        "xxx....x",
    ]
    assert rows(unrolled_mask(4, 3)) == [
        "........x...",  # index 0 at step 3: no chain root (excluded), sees only itself
        "....x....x..",
        "x....x....x.",  # root 0: step-1 key 0, step-2 key 1, itself
        "xx....x....x",
    ]
