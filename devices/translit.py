"""Text as a device's one-byte code page can show it, never failing (pure).

Printers and displays print their code page only (cp1251 on the Datecs fiscal
printers, cp437 on ESC/POS receipt printers and pole displays by default). Product
names come from the catalog in any script, so every driver sends its text through
:func:`transliterate` before encoding it: what the code page has stays as it is (the
same bytes as a plain ``encode``), the rest is spelt as people spell it without
those letters ("Łódź" -> "Lodz", "Молоко" -> "Moloko", "€" -> "EUR"), and only what
has no spelling at all (emoji, Chinese) becomes "?".
"""

from __future__ import annotations

import unicodedata

__all__ = ["encodable", "transliterate"]

# Letters NFKD does not take apart (not a base letter plus a mark), by lower case; an
# upper-case letter takes the case of its word ("Щи" -> "Shchi", "ЩИ" -> "SHCHI").
_LETTERS = {
    "ß": "ss",
    "æ": "ae",
    "œ": "oe",
    "ø": "o",
    "ł": "l",
    "đ": "d",
    "ð": "d",
    "þ": "th",
    "ħ": "h",
    "ı": "i",
    # Cyrillic (Russian, Ukrainian, Belarusian, Serbian, Macedonian), as on passports
    # and shop labels; hard and soft signs have no letter of their own.
    "а": "a",
    "б": "b",
    "в": "v",
    "г": "g",
    "д": "d",
    "е": "e",
    "ё": "e",
    "ж": "zh",
    "з": "z",
    "и": "i",
    "й": "i",
    "к": "k",
    "л": "l",
    "м": "m",
    "н": "n",
    "о": "o",
    "п": "p",
    "р": "r",
    "с": "s",
    "т": "t",
    "у": "u",
    "ф": "f",
    "х": "kh",
    "ц": "ts",
    "ч": "ch",
    "ш": "sh",
    "щ": "shch",
    "ъ": "",
    "ы": "y",
    "ь": "",
    "э": "e",
    "ю": "yu",
    "я": "ya",
    "є": "ye",
    "і": "i",
    "ї": "yi",
    "ґ": "g",
    "ў": "u",
    "ђ": "dj",
    "ј": "j",
    "љ": "lj",
    "њ": "nj",
    "ћ": "c",
    "џ": "dz",
    "ѓ": "gj",
    "ќ": "kj",
    "ѕ": "dz",
}
# Signs some code pages lack (cp437 has no euro, no typographic quotes or dashes).
_SIGNS = {
    "€": "EUR",
    "“": '"',
    "”": '"',
    "„": '"',
    "«": '"',
    "»": '"',
    "‘": "'",
    "’": "'",
    "‚": ",",
    "‹": "<",
    "›": ">",
    "–": "-",
    "—": "-",
    "−": "-",
    "•": "*",
}


def encodable(text: str, codepage: str) -> bool:
    try:
        text.encode(codepage)
    except UnicodeEncodeError:
        return False
    return True


def _spelt(char: str, upper_word: bool) -> str | None:
    """The table's spelling of ``char`` in its case, or None."""
    if char in _SIGNS:
        return _SIGNS[char]
    spelling = _LETTERS.get(char.lower())
    if spelling is None or not char.isupper():
        return spelling
    return spelling.upper() if upper_word else spelling.capitalize()


def _char(char: str, codepage: str, upper_word: bool, keep: str) -> str:
    if char in keep:
        return char
    if char < " " or char == "\x7f" or unicodedata.category(char) in ("Zl", "Zp"):
        return " "  # a control byte would be a command to the device, a break a new line
    if unicodedata.category(char) == "Cf":
        return ""  # invisible (zero-width joiners, direction marks)
    if encodable(char, codepage):
        return char
    known = _spelt(char, upper_word)
    if known is not None and encodable(known, codepage):
        return known
    out = []
    for part in unicodedata.normalize("NFKD", char):
        if unicodedata.combining(part) or unicodedata.category(part) == "Mn":
            continue  # "ä" is "a" plus a diaeresis: the letter stays, the mark goes
        if encodable(part, codepage):
            out.append(part)
        else:
            out.append(_spelt(part, upper_word) or "?")
    return "".join(out) if any(p != "?" for p in out) else "?"


def _upper_at(text: str, index: int) -> bool:
    return 0 <= index < len(text) and text[index].isupper()


def transliterate(text: str, codepage: str, *, keep: str = "") -> str:
    """``text`` in characters ``codepage`` can encode: its own characters stay, others
    are transliterated (NFKD without the marks: "Käse" -> "Kase" where there is no "ä";
    letters NFKD keeps whole and Cyrillic by a table: "ß" -> "ss", "ł" -> "l", "Щи" ->
    "Shchi"; signs: "€" -> "EUR", "“" -> '"'), what has no spelling becomes "?".
    Control characters become spaces, except those in ``keep`` (a printer's line feed)."""
    result = "".join(
        _char(char, codepage, _upper_at(text, i - 1) or _upper_at(text, i + 1), keep)
        for i, char in enumerate(text)
    )
    if not encodable(result, codepage):  # a transliteration the code page lacks
        result = result.encode(codepage, errors="replace").decode(codepage)
    return result
