"""The running batch's cache written in place (KvSlots) against transformers' concatenating one."""

from __future__ import annotations

import torch
from transformers import Gemma3TextConfig, LlamaConfig

from softprompt.generation.kv_slots import ConcatKv, KvSlots, supports
from softprompt.generation.running import RunningBatch
from softprompt.generation.sampling import SampleRequest


def _rows(count: int, width: int, seed: int, layers: int = 2):
    torch.manual_seed(seed)
    kv = [(torch.randn(count, 2, width, 4), torch.randn(count, 2, width, 4)) for _ in range(layers)]
    mask = torch.ones(count, width, dtype=torch.long)
    mask[0, : width // 2] = 0  # a left-padded row
    return kv, mask, torch.full((count, 1), width - 1)


def _same(slots: KvSlots, concat: ConcatKv) -> None:
    assert slots.rows == concat.rows
    for index, (keys, values) in enumerate(concat.layers):
        own_keys, own_values = slots.view(index, slots.end)
        assert torch.equal(own_keys, keys) and torch.equal(own_values, values)
    assert torch.equal(slots.mask[: slots.rows, slots.start : slots.end], concat.mask)
    assert torch.equal(slots.last[: slots.rows], concat.last)


def test_joins_leaves_trims_and_steps_give_what_concatenation_gives():
    slots, concat = KvSlots(), ConcatKv(LlamaConfig(num_hidden_layers=2))
    for store in (slots, concat):
        assert list(store.join(*_rows(3, 5, seed=0))) == [0, 1, 2]
        assert list(store.join(*_rows(2, 9, seed=1))) == [3, 4]  # a longer prompt: room on the left
    _same(slots, concat)
    assert slots.remove(1) == concat.remove(1) == 4  # the last row takes the freed place
    assert slots.remove(3) is concat.remove(3) is None  # the last row itself
    for store in (slots, concat):
        store.trim()
    _same(slots, concat)
    for _ in range(40):  # steps past the buffers' room: they regrow, keeping what they hold
        for store in (slots, concat):
            cache, mask, _ = store.step()
            width = mask.shape[1] - 1
            torch.manual_seed(width)
            new = [(torch.randn(store.rows, 2, 1, 4), torch.randn(store.rows, 2, 1, 4)) for _ in range(2)]
            for index, (keys, values) in enumerate(new):
                cache.layers[index].update(keys, values)
            store.stepped(cache)
    _same(slots, concat)
    assert slots.regrown >= 2


def test_a_join_and_a_step_write_in_place_without_moving_the_others():
    slots = KvSlots()
    slots.join(*_rows(2, 6, seed=0))
    keys = slots.buffers[0][0]
    span = slice(slots.start, slots.end)
    before, pointer, grown = keys[:2, :, span].clone(), keys.data_ptr(), slots.regrown
    slots.join(*_rows(1, 4, seed=2))  # shorter: fits the room there is
    cache, _, _ = slots.step()
    for index in range(2):
        cache.layers[index].update(torch.zeros(3, 2, 1, 4), torch.zeros(3, 2, 1, 4))
    slots.stepped(cache)
    assert slots.buffers[0][0].data_ptr() == pointer and slots.regrown == grown  # the same buffers
    assert torch.equal(slots.buffers[0][0][:2, :, span], before)  # the others' cache untouched


def _step(store, seed: int, layers: int = 2) -> None:
    cache, _, _ = store.step()
    torch.manual_seed(seed)
    for index in range(layers):
        cache.layers[index].update(torch.randn(store.rows, 2, 1, 4), torch.randn(store.rows, 2, 1, 4))
    store.stepped(cache)


def test_room_reserved_for_a_long_prompt_is_grown_a_layer_at_a_time_and_its_join_moves_nothing():
    layers = 4
    slots, concat = KvSlots(), ConcatKv(LlamaConfig(num_hidden_layers=layers))
    for store in (slots, concat):
        store.join(*_rows(3, 5, seed=0, layers=layers))
    slots.reserve(rows=1, left=200)  # a 200-column prompt is being read a chunk at a time
    assert slots.grow(parts=4) == 3  # one layer of four moved; the rest keep their old buffers
    old_buffer = slots.buffers[3][0].data_ptr()
    for seed, store in enumerate((slots, concat) * 2):  # the batch decodes, and a row leaves, meanwhile
        _step(store, seed // 2, layers)
    for store in (slots, concat):
        store.remove(0)
        store.trim()
    _same(slots, concat)
    assert slots.buffers[3][0].data_ptr() == old_buffer and slots.offsets[3] != 0
    assert slots.grow(parts=2) == 1 and slots.grow(parts=1) == 0  # the last chunks move the rest
    moved = [keys.data_ptr() for keys, _ in slots.buffers]
    for store in (slots, concat):
        store.join(*_rows(1, 200, seed=3, layers=layers))
    assert [keys.data_ptr() for keys, _ in slots.buffers] == moved  # the join copied only its own row
    _step(slots, 9, layers)
    _step(concat, 9, layers)
    _same(slots, concat)


def test_a_long_prompt_joining_before_its_room_was_grown_moves_what_is_left_then():
    layers = 3
    slots, concat = KvSlots(), ConcatKv(LlamaConfig(num_hidden_layers=layers))
    for store in (slots, concat):
        store.join(*_rows(2, 6, seed=0, layers=layers))
    slots.reserve(rows=1, left=50)
    slots.grow(parts=3)
    for store in (slots, concat):
        store.join(*_rows(1, 50, seed=1, layers=layers))
    assert all(offset == 0 for offset in slots.offsets)
    _same(slots, concat)


def test_models_with_sliding_window_layers_keep_transformers_cache():
    assert supports(LlamaConfig())
    assert not supports(Gemma3TextConfig())


def test_a_batch_decodes_the_same_tokens_over_either_cache(tiny_backbone):
    torch.manual_seed(0)
    soft = torch.randn(3, tiny_backbone.hidden_size)
    requests = [
        SampleRequest("a good thing to say", soft, 1, 4, 0.9, 0.0, 0),
        SampleRequest("you idiot", soft, 2, 6, 0.9, 0.9, 5),
        SampleRequest("short", None, 1, 9, 0.9, 0.0, 1),
    ]

    def decoded(concatenating: bool) -> dict:
        batch = RunningBatch(tiny_backbone)
        if concatenating:
            batch.kv = ConcatKv(tiny_backbone.model.config)
        batch.admit([(0, requests[0])])
        finished = {m.key: m.tokens for m in batch.step(2)}
        batch.admit([(1, requests[1]), (2, requests[2])])  # they join mid-way; the first leaves first
        while batch.members:
            finished.update((m.key, m.tokens) for m in batch.step())
        return finished

    assert decoded(concatenating=False) == decoded(concatenating=True)


def test_a_step_counts_the_forward_passes_it_ran_not_the_tokens_it_drew(tiny_backbone):
    """The scheduler divides a slice's time by this: a step whose every row finished on its drawn
    token runs no forward pass, costs next to nothing, and must not count."""
    batch = RunningBatch(tiny_backbone)
    batch.admit([(0, SampleRequest("a good thing to say", None, 1, 3, 0.9, 0.0, 0))])
    finished = batch.step(10)
    assert [len(sample) for member in finished for sample in member.tokens] == [3]
    assert batch.steps_run == 2  # the first token came from the prompt's logits, the last fed nothing
