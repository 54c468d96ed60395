"""The paper's closed dictionary of imaging-condition words (Chen et al., Sec. 3.1).

Seven lists; a description takes at most one word from each list for the foreground and at most one for the
background, and always a brightness word. The order of the lists (and of the words in them) is the order
zsharm writes a description's words in, so one set of words always gives the same prompt.
"""

DICTIONARY: dict[str, tuple[str, ...]] = {
    "brightness": ("dazzling", "bright", "dim", "dull", "shaded", "shadowed"),
    "weather": ("cloudy", "sunny", "rainy", "snowy", "foggy", "windy", "stormy", "clear", "misty"),
    "temperature": ("hot", "warm", "cool", "cold", "icy"),
    "season": ("spring", "summer", "autumn", "winter"),
    "time": ("dawn", "sunrise", "daylight", "twilight", "sunset", "dusk", "dark", "night"),
    "color tone": ("greyscale", "neon", "golden", "white", "blue", "green", "yellow", "orange", "red", "earthy"),
    "environment": ("city", "rural", "lake", "ocean", "mountain", "forest", "desert", "grassland", "sky", "space",
                    "indoor", "street"),
}

#: the list a word belongs to (every word is in exactly one list)
LIST_OF: dict[str, str] = {word: name for name, words in DICTIONARY.items() for word in words}

#: a word's rank in dictionary order: list by list, word by word
RANK: dict[str, int] = {word: rank for rank, word in enumerate(LIST_OF)}

WORDS: frozenset[str] = frozenset(LIST_OF)

assert len(LIST_OF) == sum(len(words) for words in DICTIONARY.values()), "a word sits in two lists"


def in_dictionary_order(words) -> tuple[str, ...]:
    """`words` sorted list by list, as the dictionary lists them (dictionary words only)."""
    return tuple(sorted(words, key=RANK.__getitem__))


def dictionary_text() -> str:
    """The dictionary as the instruction shows it: one line per list, `name: word, word, ...`."""
    return "\n".join(f"- {name}: {', '.join(words)}" for name, words in DICTIONARY.items())
