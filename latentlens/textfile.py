"""Reading the text files users hand in (prompt lists, JSONL), and checking prompts.

Files are UTF-8; a byte-order mark selects UTF-8-SIG, UTF-16 or UTF-32. Any other
encoding (Latin-1, CP-1252...) is refused with the line and byte where decoding
failed and the command that converts the file, never guessed: a wrong guess would
silently record other prompts than the user wrote.

Example::

    from latentlens.textfile import read_text, check_prompt
    text = read_text("prompts.txt", what="--prompts")   # str, or ConfigError naming the file
    check_prompt("a red circle", where="prompt 0")      # ConfigError for NUL bytes or > 10,000 chars
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

from latentlens.errors import ConfigError

#: Longest prompt accepted. Text encoders read at most a few hundred tokens; longer text is
#: almost always a file read by mistake.
MAX_PROMPT_CHARS = 10_000

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes, path: str | os.PathLike[str], what: str = "the file") -> str:
    """``data`` decoded as UTF-8 (or the encoding its byte-order mark names); ConfigError otherwise."""
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} {path} is not {encoding.upper()} text: byte {error.start} (line {line}) is "
            f"{data[error.start : error.start + 1]!r}. Save the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > prompts-utf8.txt`."
        ) from None


def read_text(path: str | os.PathLike[str], what: str = "the file") -> str:
    """The text of the file ``path`` (see :func:`decode_text`); ConfigError if it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder; give a text file.") from None
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read ({error.strerror or error}).") from None
    return decode_text(data, path, what)


def check_prompt(text: str, where: str = "the prompt") -> str:
    """``text`` if it is a usable prompt; ConfigError for NUL/control characters or excessive length."""
    bad = next(
        (ch for ch in text if ch == "\x00" or (ord(ch) < 32 and ch not in "\t\n\r")),
        None,
    )
    if bad is not None:
        raise ConfigError(
            f"{where} contains the control character {bad!r} at position {text.index(bad)}; "
            "remove it (a text encoder would silently cut or mangle the prompt there)."
        )
    if len(text) > MAX_PROMPT_CHARS:
        raise ConfigError(
            f"{where} has {len(text):,} characters, more than the {MAX_PROMPT_CHARS:,} accepted; text encoders "
            "read only the first few hundred tokens, so shorten it (or check that the right file was given)."
        )
    return text


__all__ = ["read_text", "decode_text", "check_prompt", "MAX_PROMPT_CHARS"]
