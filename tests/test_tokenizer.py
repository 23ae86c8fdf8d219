import numpy as np
import pytest

from critkl.tasks.addition import oracle, tokenizer


def test_round_trip_of_an_episode():
    text = oracle.episode_text(98765, 4321)
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32
    assert tokenizer.decode(ids) == text


def test_ids_are_distinct_and_special_ids_reserved():
    ids = [tokenizer.token_id(c) for c in tokenizer.CHARACTERS]
    assert len(set(ids)) == len(ids)
    assert tokenizer.PAD_ID not in ids and tokenizer.EOS_ID not in ids
    assert max(ids) == tokenizer.VOCAB_SIZE - 1


def test_decode_stops_at_padding_and_end():
    ids = np.concatenate([tokenizer.encode("12"), [tokenizer.EOS_ID], tokenizer.encode("3")])
    assert tokenizer.decode(ids) == "12"


def test_unknown_character_is_named():
    with pytest.raises(ValueError, match="'x'"):
        tokenizer.encode("12x")
