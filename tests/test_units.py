import pytest

from wasmstream.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("64K", 65536),
        ("64KiB", 65536),
        ("64k", 65536),
        ("1M", 1 << 20),
        ("1MiB", 1 << 20),
        ("2G", 2 << 30),
        ("1 KiB", 1024),
        ("10B", 10),
    ],
)
def test_parse_size_accepts_the_documented_forms(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "K", "1.5M", "-1", "12Q", "64 kibibytes"])
def test_parse_size_rejects_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(("size", "text"), [(65536, "64KiB"), (1 << 20, "1MiB"), (1000, "1000B")])
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("3", 3.0),
        ("1h", 3600.0),
        (".25s", 0.25),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "-1s", "2 weeks", "1ss"])
def test_parse_duration_rejects_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0.5, "500ms"), (2.0, "2s"), (90.0, "90s")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
