"""
A description prompt is "OBJECT word word ...": the object, then imaging-condition words. Refinement works on
the tokens of the condition words. CLIP's BPE splits a word into several tokens when it is rare
("greyscale" -> "grey" + "scale"), so positions are found word by word, never assumed one token each.

"""

from zsharm.errors import ZsharmError


def word_token_spans(tokenizer, prompt: str) -> list:
    """[(word, [token positions])] for each whitespace-separated word; position 0 is the start token."""
    words = prompt.split()
    full = tokenizer(prompt).input_ids
    spans, pos = [], 1
    for word in words:
        n = len(tokenizer(word).input_ids) - 2  # without start and end tokens
        spans.append((word, list(range(pos, pos + n))))
        pos += n
    # CLIP's pre-tokenizer splits on whitespace (and punctuation) before BPE, so words tokenize independently
    if pos != len(full) - 1:
        raise ZsharmError(f"prompt {prompt!r} does not tokenize word by word; use plain words without punctuation")
    if pos >= tokenizer.model_max_length - 1:
        raise ZsharmError(f"prompt {prompt!r} is longer than the text encoder's {tokenizer.model_max_length} tokens")
    return spans


def split_object(source: str, target: str, vocabulary=None) -> int:
    """How many leading words of the prompts name the object.

    With a vocabulary (the closed dictionary of condition words), the object is the leading run of words that
    are not in it. Without one, the authors' rule: the first word.
    """
    src, tgt = source.split(), target.split()
    if not src or not tgt:
        raise ZsharmError("source and target prompts must not be empty")
    n = 1
    if vocabulary:
        n = 0
        while n < min(len(src), len(tgt)) - 1 and src[n] == tgt[n] and src[n].lower() not in vocabulary:
            n += 1
        n = max(n, 1)
    if src[:n] != tgt[:n]:
        raise ZsharmError(f"source {source!r} and target {target!r} must start with the same object word")
    if len(src) <= n or len(tgt) <= n:
        raise ZsharmError(f"prompts need at least one condition word after the object: {source!r}, {target!r}")
    return n


def description_positions(tokenizer, prompt: str, object_words: int) -> list:
    """Token positions of the condition words (everything after the object's words)."""
    spans = word_token_spans(tokenizer, prompt)
    return [p for _, positions in spans[object_words:] for p in positions]


def condition_vocabulary():
    """The closed dictionary of condition words, if the describe stage is installed (it is part of zsharm)."""
    from zsharm.vocabulary import DICTIONARY
    return {w for words in DICTIONARY.values() for w in words}
