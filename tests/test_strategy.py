import pytest

from chronox.strategy import InvalidInput, canonical_strategy, parse_strategy, validate_symbol


@pytest.mark.parametrize("text,phases", [
    ("flatpack", ("flatpack",)),
    ("api+flatpack", ("flatpack", "api")),
    ("stream+snapshot+api+flatpack", ("flatpack", "api", "snapshot", "stream")),
    (" FlatPack + API ", ("flatpack", "api")),
    ("FLATPACK", ("flatpack",)),
    ("FLATPACK_API", ("flatpack", "api")),
    ("snapshot_stream", ("snapshot", "stream")),
    ("FLATPACK_SNAPSHOT_STREAM", ("flatpack", "snapshot", "stream")),
    ("FLATPACK_API_SNAPSHOT_STREAM", ("flatpack", "api", "snapshot", "stream")),
    ("API", ("api",)),
    ("STREAM", ("stream",)),
    ("SNAPSHOT", ("snapshot",)),
])
def test_strategies_and_aliases_parse_to_canonical_phases(text, phases):
    assert parse_strategy(text) == phases
    assert canonical_strategy(text) == "+".join(phases)


@pytest.mark.parametrize("text", ["", "   ", "flatpak", "flatpack+", "flatpack+flatpack", "API_STREAM",
                                  "flatpack,api", None])
def test_bad_strategies_are_rejected_with_the_valid_phases(text):
    with pytest.raises(InvalidInput) as err:
        parse_strategy(text)
    message = str(err.value)
    assert "\n" not in message
    if text and text.strip() and "flatpack+flatpack" != text:
        assert "flatpack, api, snapshot, stream" in message


@pytest.mark.parametrize("text,expected", [("aapl", "AAPL"), ("BRK.B", "BRK.B"), ("BF-B", "BF-B"),
                                           (" msft ", "MSFT"), ("A", "A"), ("ABCDEFGHIJ", "ABCDEFGHIJ")])
def test_valid_symbols_are_normalized(text, expected):
    assert validate_symbol(text) == expected


@pytest.mark.parametrize("text", ["", "ABCDEFGHIJK", "AA PL", "AAPL;DROP", "../etc", "ÄPFEL", ".AAPL",
                                  "AA\nPL", "A*"])
def test_invalid_symbols_are_rejected(text):
    with pytest.raises(InvalidInput) as err:
        validate_symbol(text)
    assert "invalid symbol" in str(err.value)
