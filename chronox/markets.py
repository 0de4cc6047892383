"""Markets and providers are per-symbol facts (DESIGN decisions 10 and 12).

A symbol's canonical spelling is safe in Kafka topic names, Redis keys, file paths and
Hive partitions: stocks as exchanges write them (`BRK.B`), crypto as `BASE-QUOTE`
(`BTC-USD`). Provider spellings (`X:BTCUSD`, `X:BTC-USD`, `BTCUSDT`, `bitcoin`) exist
only at the provider edge; these functions translate.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from chronox.strategy import PHASES, InvalidInput, validate_symbol


class Market(StrEnum):
    STOCKS = "stocks"
    CRYPTO = "crypto"


class ProviderId(StrEnum):
    POLYGON = "polygon"
    BINANCE = "binance"
    COINGECKO = "coingecko"


# Phases each provider can serve, per market; anything else is refused when a symbol is added.
PROVIDER_PHASES: dict[tuple[Market, ProviderId], frozenset[str]] = {
    # Ticks (trades, quotes) are Polygon's US stocks only: its crypto trades carry neither a SIP
    # timestamp nor a sequence number, the identity ChronoX keeps ticks by.
    (Market.STOCKS, ProviderId.POLYGON): frozenset({"flatpack", "api", "snapshot", "stream", "news", "trades",
                                                    "quotes"}),
    (Market.CRYPTO, ProviderId.POLYGON): frozenset({"flatpack", "api", "snapshot", "stream"}),
    (Market.CRYPTO, ProviderId.BINANCE): frozenset({"flatpack", "api", "snapshot", "stream"}),
    (Market.CRYPTO, ProviderId.COINGECKO): frozenset({"api", "snapshot"}),
}
# Timeframes a provider's api phase can fetch (CoinGecko's OHLC range is hourly or daily).
PROVIDER_TIMEFRAMES: dict[ProviderId, frozenset[str]] = {
    ProviderId.POLYGON: frozenset({"1m", "5m", "15m", "1h", "1d"}),
    ProviderId.BINANCE: frozenset({"1m", "5m", "15m", "1h", "1d"}),
    ProviderId.COINGECKO: frozenset({"1h", "1d"}),
}

# Quote currencies, longest first, to split a spelling without a separator (BTCUSDT).
QUOTES = ("FDUSD", "USDT", "USDC", "TUSD", "BUSD", "USD", "EUR", "GBP", "JPY", "BTC", "ETH", "BNB", "TRY")
_ASSET = re.compile(r"^[A-Z0-9]{1,12}$")


def parse_market(text: str | None) -> Market:
    try:
        return Market((text or Market.STOCKS).strip().lower())
    except ValueError:
        raise InvalidInput(f"unknown market {text!r}; markets: {', '.join(Market)}") from None


def parse_provider(text: str | None, market: Market) -> ProviderId:
    try:
        provider = ProviderId((text or ProviderId.POLYGON).strip().lower())
    except ValueError:
        raise InvalidInput(f"unknown provider {text!r}; providers: {', '.join(ProviderId)}") from None
    if (market, provider) not in PROVIDER_PHASES:
        raise InvalidInput(f"provider {provider} does not serve the {market} market")
    return provider


def _split_pair(text: str) -> tuple[str, str]:
    for quote in QUOTES:
        if text.endswith(quote) and len(text) > len(quote):
            return text[: -len(quote)], quote
    raise InvalidInput(f"cannot tell the base from the quote currency in {text!r}; write it as BASE-QUOTE")


def canonical_symbol(text: str, market: Market) -> str:
    """The canonical spelling of a symbol of `market`; raises InvalidInput.

    Crypto accepts `BTC-USD`, `BTC/USD`, `btc-usd`, Polygon's `X:BTCUSD` and `X:BTC-USD`
    and a bare `BTCUSDT`, and returns `BTC-USD` / `BTC-USDT`.
    """
    if market == Market.STOCKS:
        return validate_symbol(text)
    if not isinstance(text, str) or not text.isascii():
        raise InvalidInput(f"invalid symbol {text!r}: a crypto symbol is BASE-QUOTE, e.g. BTC-USD")
    value = text.strip().upper()
    if value.startswith("X:"):
        value = value[2:]
    value = value.replace("/", "-")
    base, sep, quote = value.partition("-")
    if not sep:
        base, quote = _split_pair(value)
    if not (_ASSET.fullmatch(base) and _ASSET.fullmatch(quote)):
        raise InvalidInput(f"invalid symbol {text!r}: a crypto symbol is BASE-QUOTE of letters and digits, "
                           "e.g. BTC-USD")
    return f"{base}-{quote}"


def lookup_symbol(text: str) -> str:
    """The canonical spelling of a symbol given to look one up, whatever its market: a crypto
    spelling (`BTC/USD`, `X:BTCUSD`) is canonicalized, anything else follows the stock rules
    (which `BTC-USD` also satisfies)."""
    if isinstance(text, str) and ("/" in text or text.strip().upper().startswith("X:")):
        return canonical_symbol(text, Market.CRYPTO)
    try:
        return validate_symbol(text)
    except InvalidInput:
        if isinstance(text, str) and "-" in text:  # a pair longer than a ticker: PENDLE-USDT
            return canonical_symbol(text, Market.CRYPTO)
        raise


def polygon_ticker(symbol: str, market: Market) -> str:
    """Polygon REST's ticker: `AAPL`, `X:BTCUSD`."""
    return f"X:{symbol.replace('-', '')}" if market == Market.CRYPTO else symbol


def polygon_ticker_spellings(symbol: str, market: Market) -> tuple[str, ...]:
    """Every spelling Polygon uses for the symbol (REST `X:BTCUSD`, flat files and sockets `X:BTC-USD`)."""
    if market != Market.CRYPTO:
        return (symbol,)
    return (f"X:{symbol.replace('-', '')}", f"X:{symbol}")


def binance_symbol(symbol: str) -> str:
    """Binance's spelling: `BTC-USDT` -> `BTCUSDT`."""
    return symbol.replace("-", "")


def provider_symbol(symbol: str, market: Market, provider: ProviderId, override: str | None = None) -> str:
    """How `provider` names the symbol; `override` (the registry's provider_symbol) wins."""
    if override:
        return override
    if provider == ProviderId.BINANCE:
        return binance_symbol(symbol)
    if provider == ProviderId.POLYGON:
        return polygon_ticker(symbol, market)
    raise InvalidInput(f"{provider} needs the provider's own id for {symbol} (--provider-symbol, e.g. bitcoin)")


def check_phases(phases: tuple[str, ...], market: Market, provider: ProviderId, timeframe: str) -> None:
    """Refuse a strategy the provider cannot serve, with the reason."""
    served = PROVIDER_PHASES[(market, provider)]
    refused = [p for p in phases if p not in served]
    if refused:
        raise InvalidInput(f"{provider} cannot serve the {'+'.join(refused)} phase(s) for {market}: it serves "
                           f"{', '.join(p for p in PHASES if p in served)}")
    if "api" in phases and timeframe not in PROVIDER_TIMEFRAMES[provider]:
        raise InvalidInput(f"{provider}'s api phase fetches {', '.join(sorted(PROVIDER_TIMEFRAMES[provider]))} "
                           f"bars, not {timeframe}")


@dataclass(frozen=True)
class Instrument:
    """A symbol with where it trades and who serves it: what a phase needs to ask the
    symbol's provider and calendar. Registry rows carry it; ad-hoc runs name it."""

    symbol: str
    market: Market = Market.STOCKS
    provider: ProviderId = ProviderId.POLYGON
    provider_symbol: str | None = None

    @property
    def is_default(self) -> bool:
        """A US stock from Polygon: what every symbol was before markets and providers."""
        return (self.market, self.provider, self.provider_symbol) == (Market.STOCKS, ProviderId.POLYGON, None)

    @property
    def origin(self) -> tuple[str, str]:
        """(market, provider), as envelopes name them."""
        return self.market.value, self.provider.value

    def provider_name(self) -> str:
        return provider_symbol(self.symbol, self.market, self.provider, self.provider_symbol)

    def as_kwargs(self) -> dict[str, str]:
        """Task kwargs that name it, empty for the default (so Flower shows plain runs as before)."""
        if self.is_default:
            return {}
        out = {"market": self.market.value, "provider": self.provider.value}
        if self.provider_symbol:
            out["provider_symbol"] = self.provider_symbol
        return out

    @classmethod
    def of(cls, symbol: str, market: str | None = None, provider: str | None = None,
           provider_symbol: str | None = None) -> Instrument:
        the_market = parse_market(market)
        return cls(canonical_symbol(symbol, the_market), the_market, parse_provider(provider, the_market),
                   provider_symbol or None)


def as_instrument(value: Instrument | str) -> Instrument:
    """A bare symbol is a US stock from Polygon (what every symbol was before markets)."""
    return value if isinstance(value, Instrument) else Instrument(validate_symbol(value))
