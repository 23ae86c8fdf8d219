"""Character vocabulary of the addition scratchpad format.

Every character of an episode is one token. Id 0 is padding and id 1 is
end-of-sequence; the characters of the format follow in a fixed order, so ids
are stable across versions and checkpoints.
"""

from __future__ import annotations

import numpy as np

from critkl.tasks.base import EOS_ID, PAD_ID

# Every character that the scratchpad format uses (see METHOD.md, section 1).
CHARACTERS = "0123456789+,=[]-> \n:</ACDEINTaceghnprstu"
VOCAB = ("<pad>", "<eos>") + tuple(CHARACTERS)
VOCAB_SIZE = len(VOCAB)
_CHAR_TO_ID = {c: i + 2 for i, c in enumerate(CHARACTERS)}


def token_id(char: str) -> int:
    """The id of one character of the format."""
    try:
        return _CHAR_TO_ID[char]
    except KeyError:
        raise ValueError(
            f"character {char!r} is not in the critkl vocabulary "
            f"(allowed: {CHARACTERS!r})"
        ) from None


DIGIT_0 = token_id("0")  # digits 0..9 are ids DIGIT_0 .. DIGIT_0 + 9


def encode(text: str) -> np.ndarray:
    """Text -> int32 ids, shape [len(text)]. Raises ValueError on an unknown character."""
    return np.array([token_id(c) for c in text], dtype=np.int32)


def decode(ids) -> str:
    """Ids -> text. Stops at the first padding or end-of-sequence id."""
    chars = []
    for i in np.asarray(ids).reshape(-1).tolist():
        if i in (PAD_ID, EOS_ID):
            break
        if not 2 <= i < VOCAB_SIZE:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {VOCAB_SIZE})")
        chars.append(CHARACTERS[i - 2])
    return "".join(chars)
