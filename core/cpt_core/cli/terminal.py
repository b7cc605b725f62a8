"""Text from sources `cpt` does not control, made safe for a terminal: control sequences stripped.

A pod's log, a copied log on S3, an S3 key or a server's error message is written by whoever runs the
job's container or its endpoint. Written raw, its escape sequences would be the terminal's commands:
set the window title, rewrite what is on screen, hide text, write OSC 52 to the clipboard, and worse on
some terminals. `TerminalFilter` removes, from a byte stream cut anywhere (a sequence may span chunks),
every ANSI escape sequence -- CSI (`ESC [` ... and its 8-bit form), OSC, DCS, SOS, PM and APC strings up
to their terminator (BEL or ST), and the other `ESC` sequences -- and every other C0 and C1 control
character and DEL, except newline, tab and carriage return. Bytes that are not UTF-8 become U+FFFD, so
no raw 8-bit control byte gets through to a terminal that would read it as one.
"""

from __future__ import annotations

import codecs
import re

#: Kept: newline, tab, carriage return (progress bars redraw a line with it).
_CONTROLS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
#: OSC, DCS, SOS, PM, APC (7-bit `ESC ] P X ^ _` or 8-bit) up to BEL or ST (`ESC \` or 0x9c). Their body
#: stops at any introducer too, so that a scan never runs past the next one (no quadratic matching).
_BODY = r"[^\x07\x1b\x90\x98\x9c-\x9f]*"
_STRING = r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])" + _BODY + r"(?:\x07|\x1b\\|\x9c)"
#: CSI (`ESC [` or 0x9b): parameters, intermediates, one final byte.
_CSI = r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
#: Any other escape sequence: intermediates, one final byte.
_ESCAPE = r"\x1b[\x20-\x2f]*[\x30-\x7e]"
_SEQUENCES = re.compile("|".join((_STRING, _CSI, _ESCAPE, _CONTROLS)))
#: A sequence begun at the end of what has arrived so far (held back until the next chunk completes it).
_UNFINISHED = re.compile(
    r"(?:(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])" + _BODY + r"\x1b?"
    r"|(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*"
    r"|\x1b[\x20-\x2f]*)\Z"
)
#: The longest sequence held back; a longer unterminated one loses its introducer and shows as text.
MAX_PENDING = 4096


def terminal_safe(text: str) -> str:
    """`text` without control sequences and control characters (newline, tab and carriage return kept)."""
    return _SEQUENCES.sub("", text)


class TerminalFilter:
    """`terminal_safe` over a byte stream in chunks: `feed` each chunk, then `close`; both return the bytes
    to write (UTF-8)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, chunk: bytes) -> bytes:
        text = self._pending + self._decoder.decode(chunk)
        self._pending = ""
        unfinished = _UNFINISHED.search(text)
        if unfinished is not None and len(text) - unfinished.start() <= MAX_PENDING:
            text, self._pending = text[: unfinished.start()], text[unfinished.start() :]
        return terminal_safe(text).encode()

    def close(self) -> bytes:
        text, self._pending = self._pending + self._decoder.decode(b"", final=True), ""
        return terminal_safe(text).encode()


def safe_bytes(data: bytes) -> bytes:
    """A whole log at once through `TerminalFilter`."""
    stream = TerminalFilter()
    return stream.feed(data) + stream.close()
