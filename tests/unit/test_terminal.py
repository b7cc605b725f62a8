"""What `cpt` writes to a terminal from a source it does not control (a pod's log, a copied log, a server's
message): no control sequence survives, text does, wherever a stream is cut."""

from __future__ import annotations

import re

import pytest
from cpt_core.cli.terminal import MAX_PENDING, TerminalFilter, safe_bytes, terminal_safe

# The terminal's commands an attacker's log would carry, each with the text around it that must stay.
HOSTILE = [
    ("colour (CSI SGR)", b"\x1b[31mred\x1b[0m", b"red"),
    ("cursor up and erase line (CSI)", b"step 1\x1b[1A\x1b[2Kforged", b"step 1forged"),
    ("private CSI (hide the cursor)", b"a\x1b[?25lb", b"ab"),
    ("window title (OSC, BEL)", b"x\x1b]0;pwned\x07y", b"xy"),
    ("clipboard write (OSC 52, ST)", b"x\x1b]52;c;cm0gLXJmIH4=\x1b\\y", b"xy"),
    ("hyperlink (OSC 8)", b"\x1b]8;;http://evil/\x1b\\click\x1b]8;;\x1b\\", b"click"),
    ("device control string (DCS)", b"a\x1bP+q544e\x1b\\b", b"ab"),
    ("application program command (APC)", b"a\x1b_payload\x1b\\b", b"ab"),
    ("8-bit CSI (U+009B)", "a\u009b31mb".encode(), b"ab"),
    ("8-bit OSC (U+009D) with 8-bit ST", "a\u009d0;t\u009cb".encode(), b"ab"),
    ("raw 8-bit CSI byte (not UTF-8)", b"a\x9b31mb", "a\ufffd31mb".encode()),
    ("charset switch (ESC ( 0)", b"a\x1b(0b", b"ab"),
    ("keypad mode, reset (ESC =, ESC c)", b"a\x1b=b\x1bcc", b"abc"),
    ("backspace, bell, form feed, vertical tab, DEL", b"a\x08b\x07c\x0cd\x0be\x7ff", b"abcdef"),
    ("NUL and other C0", b"a\x00b\x01c\x1fd", b"abcd"),
    ("a lone ESC at the end", b"done\x1b", b"done"),
    ("an unterminated OSC at the end", b"done\x1b]0;half a title", b"done0;half a title"),
]
KEPT = b"step 12/30 loss 5.74 \xe2\x86\x92 done \xe2\x9c\x93\n\tindented\r\nprogress 80 %\r"


@pytest.mark.parametrize(("name", "data", "shown"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_control_sequences_are_stripped(name: str, data: bytes, shown: bytes) -> None:
    assert safe_bytes(data) == shown


def test_text_newlines_tabs_and_carriage_returns_stay() -> None:
    assert safe_bytes(KEPT) == KEPT
    assert terminal_safe(KEPT.decode()) == KEPT.decode()


def test_nothing_that_a_terminal_obeys_is_left_in_random_input() -> None:
    import random

    rng = random.Random(7)
    for _ in range(200):
        data = bytes(rng.choice(b"\x1b\x07\x9b\x9d\x9c\\[]P_^X0;m?\xc2ab\n\r\t\x00\x7f") for _ in range(64))
        out = safe_bytes(data).decode()
        assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", out), repr(out)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_a_stream_cut_anywhere_gives_what_the_whole_gives(size: int) -> None:
    """A sequence (or a UTF-8 character) split across chunks of the pod log stream is still stripped whole."""
    data = b"".join(h[1] for h in HOSTILE[:-2]) + KEPT
    stream = TerminalFilter()
    out = b"".join(stream.feed(data[i : i + size]) for i in range(0, len(data), size)) + stream.close()
    assert out == safe_bytes(data)
    assert b"pwned" not in out and b"cm0gLXJmIH4=" not in out and b"\x1b" not in out


def test_an_unterminated_string_is_not_held_back_forever() -> None:
    """An OSC that never ends costs at most MAX_PENDING characters of delay, then shows as text, without its
    introducer; a long run of introducers is handled in linear time."""
    stream = TerminalFilter()
    first = stream.feed(b"\x1b]0;" + b"x" * (MAX_PENDING + 10))
    assert first.startswith(b"0;xxx") and b"\x1b" not in first
    assert stream.feed(b"\n") == b"\n" and stream.close() == b""
    assert safe_bytes("\u009d".encode() * 50_000) == b""
