"""Control values: every accepted spelling, every refused one, and the text reads give."""

from __future__ import annotations

import pytest

from vmemfs import ctl, values
from vmemfs.ctl import ControlValueError


@pytest.mark.parametrize(("name", "raw", "value"), [
    ("wordsize", b"32", 32),
    ("wordsize", b"64\n", 64),
    ("wordsize", b"unset\n", None),
    ("endian", b"little", "little"),
    ("endian", b"le\n", "little"),
    ("endian", b"big\n", "big"),
    ("endian", b"be", "big"),
    ("endian", b"unset", None),
    ("base", b"0", 0),
    ("base", b"4096\n", 4096),
    ("base", b"0x1000", 0x1000),
    ("base", b"0XFFFFFFFF81000000\n", 0xffffffff81000000),
    ("base", b"0xffffffffffffffff", 2**64 - 1),
    ("base", b"18446744073709551615", 2**64 - 1),
    ("base", b"0x0000000000000000000001", 1),
    ("holes", b"eio\n", "eio"),
    ("holes", b"zero", "zero"),
])
def test_accepted(name: str, raw: bytes, value: object) -> None:
    assert ctl.parse(name, raw) == value
    assert ctl.parse(name, raw.rstrip(b"\n").decode()) == value


@pytest.mark.parametrize(("name", "raw"), [
    ("wordsize", b""),
    ("wordsize", b"\n"),
    ("wordsize", b"16"),
    ("wordsize", b"0x40"),
    ("wordsize", b"64\n\n"),
    ("wordsize", b"none"),
    ("endian", b"middle"),
    ("endian", b"l"),
    ("endian", b"little\x00"),
    ("endian", b"\xff\xfe"),
    ("base", b""),
    ("base", b"-1"),
    ("base", b"+1"),
    ("base", b"0x"),
    ("base", b"0x-1"),
    ("base", b"0x10000000000000000"),
    ("base", b"18446744073709551616"),
    ("base", b"1e3"),
    ("base", b"0x" + b"0" * 80),
    ("holes", b"zeros"),
    ("holes", b"unset"),
])
def test_refused(name: str, raw: bytes) -> None:
    with pytest.raises(ControlValueError) as caught:
        ctl.parse(name, raw)
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


def test_refused_is_a_value_error() -> None:
    assert issubclass(ControlValueError, ValueError)


@pytest.mark.parametrize(("name", "value", "text"), [
    ("wordsize", 32, b"32\n"),
    ("wordsize", None, b"unset\n"),
    ("endian", "big", b"big\n"),
    ("endian", None, b"unset\n"),
    ("base", 0, b"0x0000000000000000\n"),
    ("base", 0xffffffff81000000, b"0xffffffff81000000\n"),
    ("holes", "zero", b"zero\n"),
])
def test_format(name: str, value: object, text: bytes) -> None:
    assert ctl.format_value(name, value) == text
    assert ctl.parse(name, text) == value


def test_checked_names_the_setting() -> None:
    assert ctl.checked("offset", values.parse_size, "0x10") == 16
    with pytest.raises(ControlValueError, match=r"^length: 'ten'"):
        ctl.checked("length", values.parse_size, "ten")


def test_unknown_control() -> None:
    with pytest.raises(KeyError):
        ctl.parse("maps", b"x")
    assert ctl.CONTROLS == ("wordsize", "endian", "base", "holes")


def test_numbers_take_binary_suffixes() -> None:
    assert values.parse_size("4K") == 4096
    assert values.parse_size("0x10M") == 16 << 20
    assert values.parse_address("0xffffffff81000000") == 0xFFFFFFFF81000000
    for bad in ("K", "-1K", "1.5K", "4 K", "16777216T", "0x"):
        with pytest.raises(values.BadValue):
            values.parse_address(bad)


def test_mount_and_command_accept_the_same_numbers() -> None:
    from vmemfs.cli import parse_number
    from vmemfs.mount import parse_command_line

    invocation = parse_command_line(["src", "dir", "-o", "address=1M,offset=0x10,length=4K"])
    options = invocation.options
    assert (options.address, options.offset, options.length) == (1 << 20, 16, 4096)
    assert [parse_number(text) for text in ("1M", "0x10", "4K")] == [1 << 20, 16, 4096]
