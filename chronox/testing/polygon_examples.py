"""Polygon's documented response examples, as published, for every endpoint ChronoX calls.

The Polygon REST stand-in (chronox.testing.polygon_rest) serves them so tests check the
parsers against what Polygon says it sends, not against what the parsers accept. Sources:
polygon-api-client (github.com/polygon-io/client-python): its OpenAPI spec, the source of
the examples on Polygon's documentation pages (.polygon/rest.json from Aug 2022, since Aug
2024 .massive/rest.json), and its own test fixtures (test_rest/mocks/). Each payload is the
whole published answer; `next_url` of a published page points at Polygon, so the
stand-in serves a page's `results` and paginates itself.
"""
# ruff: noqa: E501 (the payloads keep their published lines)
from __future__ import annotations

import json
from typing import Any


def _published(text: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(text)
    return payload


# polygon-api-client's OpenAPI spec (.polygon/rest.json, commit e0bdacd, Aug 2022 until Aug 2024): GET
# /v3/reference/dividends. No `id`, no `currency`.
DIVIDENDS_2022 = _published("""
{
 "next_url": "https://api.polygon.io/v3/reference/dividends/AAPL?cursor=YWN0aXZlPXRydWUmZGF0ZT0yMDIxLTA0LTI1JmxpbWl0PTEmb3JkZXI9YXNjJnBhZ2VfbWFya2VyPUElN0M5YWRjMjY0ZTgyM2E1ZjBiOGUyNDc5YmZiOGE1YmYwNDVkYzU0YjgwMDcyMWE2YmI1ZjBjMjQwMjU4MjFmNGZiJnNvcnQ9dGlja2Vy",
 "results": [
  {
   "cash_amount": 0.22,
   "declaration_date": "2021-10-28",
   "dividend_type": "CD",
   "ex_dividend_date": "2021-11-05",
   "frequency": 4,
   "pay_date": "2021-11-11",
   "record_date": "2021-11-08",
   "ticker": "AAPL"
  },
  {
   "cash_amount": 0.22,
   "declaration_date": "2021-07-27",
   "dividend_type": "CD",
   "ex_dividend_date": "2021-08-06",
   "frequency": 4,
   "pay_date": "2021-08-12",
   "record_date": "2021-08-09",
   "ticker": "AAPL"
  }
 ],
 "status": "OK"
}
""")

# same spec: GET /v3/reference/splits. No `id`; split_from/split_to are integers.
SPLITS_2022 = _published("""
{
 "next_url": "https://api.polygon.io/v3/splits/AAPL?cursor=YWN0aXZlPXRydWUmZGF0ZT0yMDIxLTA0LTI1JmxpbWl0PTEmb3JkZXI9YXNjJnBhZ2VfbWFya2VyPUElN0M5YWRjMjY0ZTgyM2E1ZjBiOGUyNDc5YmZiOGE1YmYwNDVkYzU0YjgwMDcyMWE2YmI1ZjBjMjQwMjU4MjFmNGZiJnNvcnQ9dGlja2Vy",
 "results": [
  {
   "execution_date": "2020-08-31",
   "split_from": 1,
   "split_to": 4,
   "ticker": "AAPL"
  },
  {
   "execution_date": "2005-02-28",
   "split_from": 1,
   "split_to": 2,
   "ticker": "AAPL"
  }
 ],
 "status": "OK"
}
""")

# the spec of today: GET /v3/reference/dividends, records with Polygon's `id`.
DIVIDENDS = _published("""
{
 "next_url": "https://api.massive.com/v3/reference/dividends/AAPL?cursor=YWN0aXZlPXRydWUmZGF0ZT0yMDIxLTA0LTI1JmxpbWl0PTEmb3JkZXI9YXNjJnBhZ2VfbWFya2VyPUElN0M5YWRjMjY0ZTgyM2E1ZjBiOGUyNDc5YmZiOGE1YmYwNDVkYzU0YjgwMDcyMWE2YmI1ZjBjMjQwMjU4MjFmNGZiJnNvcnQ9dGlja2Vy",
 "results": [
  {
   "cash_amount": 0.22,
   "declaration_date": "2021-10-28",
   "dividend_type": "CD",
   "ex_dividend_date": "2021-11-05",
   "frequency": 4,
   "id": "E8e3c4f794613e9205e2f178a36c53fcc57cdabb55e1988c87b33f9e52e221444",
   "pay_date": "2021-11-11",
   "record_date": "2021-11-08",
   "ticker": "AAPL"
  },
  {
   "cash_amount": 0.22,
   "declaration_date": "2021-07-27",
   "dividend_type": "CD",
   "ex_dividend_date": "2021-08-06",
   "frequency": 4,
   "id": "E6436c5475706773f03490acf0b63fdb90b2c72bfeed329a6eb4afc080acd80ae",
   "pay_date": "2021-08-12",
   "record_date": "2021-08-09",
   "ticker": "AAPL"
  }
 ],
 "status": "OK"
}
""")

# the spec of today: GET /v3/reference/splits, records with Polygon's `id`.
SPLITS = _published("""
{
 "next_url": "https://api.massive.com/v3/splits/AAPL?cursor=YWN0aXZlPXRydWUmZGF0ZT0yMDIxLTA0LTI1JmxpbWl0PTEmb3JkZXI9YXNjJnBhZ2VfbWFya2VyPUElN0M5YWRjMjY0ZTgyM2E1ZjBiOGUyNDc5YmZiOGE1YmYwNDVkYzU0YjgwMDcyMWE2YmI1ZjBjMjQwMjU4MjFmNGZiJnNvcnQ9dGlja2Vy",
 "results": [
  {
   "execution_date": "2020-08-31",
   "id": "E36416cce743c3964c5da63e1ef1626c0aece30fb47302eea5a49c0055c04e8d0",
   "split_from": 1,
   "split_to": 4,
   "ticker": "AAPL"
  },
  {
   "execution_date": "2005-02-28",
   "id": "E90a77bdf742661741ed7c8fc086415f0457c2816c45899d73aaa88bdc8ff6025",
   "split_from": 1,
   "split_to": 2,
   "ticker": "AAPL"
  }
 ],
 "status": "OK"
}
""")

# polygon-api-client's test fixture test_rest/mocks/v3/reference/dividends.json (May 2022): several tickers,
# no `id`.
DIVIDENDS_CLIENT = _published("""
{
 "results": [
  {
   "cash_amount": 0.59375,
   "declaration_date": "2020-09-09",
   "dividend_type": "CD",
   "ex_dividend_date": "2025-06-12",
   "frequency": 4,
   "pay_date": "2025-06-30",
   "record_date": "2025-06-15",
   "ticker": "CSSEN"
  },
  {
   "cash_amount": 0.59375,
   "declaration_date": "2020-09-09",
   "dividend_type": "CD",
   "ex_dividend_date": "2025-03-13",
   "frequency": 4,
   "pay_date": "2025-03-31",
   "record_date": "2025-03-15",
   "ticker": "CSSEN"
  },
  {
   "cash_amount": 0.59375,
   "declaration_date": "2020-09-09",
   "dividend_type": "CD",
   "ex_dividend_date": "2024-12-12",
   "frequency": 4,
   "pay_date": "2024-12-31",
   "record_date": "2024-12-15",
   "ticker": "CSSEN"
  },
  {
   "cash_amount": 0.59375,
   "declaration_date": "2020-09-09",
   "dividend_type": "CD",
   "ex_dividend_date": "2024-09-12",
   "frequency": 4,
   "pay_date": "2024-09-30",
   "record_date": "2024-09-15",
   "ticker": "CSSEN"
  },
  {
   "cash_amount": 0.59375,
   "declaration_date": "2020-09-09",
   "dividend_type": "CD",
   "ex_dividend_date": "2024-06-13",
   "frequency": 4,
   "pay_date": "2024-06-30",
   "record_date": "2024-06-15",
   "ticker": "CSSEN"
  },
  {
   "cash_amount": 0.59375,
   "declaration_date": "2020-09-09",
   "dividend_type": "CD",
   "ex_dividend_date": "2024-03-14",
   "frequency": 4,
   "pay_date": "2024-03-31",
   "record_date": "2024-03-15",
   "ticker": "CSSEN"
  },
  {
   "cash_amount": 0.59375,
   "declaration_date": "2020-09-09",
   "dividend_type": "CD",
   "ex_dividend_date": "2023-12-14",
   "frequency": 4,
   "pay_date": "2023-12-31",
   "record_date": "2023-12-15",
   "ticker": "CSSEN"
  },
  {
   "cash_amount": 0.5,
   "declaration_date": "2022-02-10",
   "dividend_type": "CD",
   "ex_dividend_date": "2023-11-13",
   "frequency": 4,
   "pay_date": "2023-11-15",
   "record_date": "2023-11-14",
   "ticker": "AIRTP"
  },
  {
   "cash_amount": 0.59375,
   "declaration_date": "2020-09-09",
   "dividend_type": "CD",
   "ex_dividend_date": "2023-09-14",
   "frequency": 4,
   "pay_date": "2023-09-30",
   "record_date": "2023-09-15",
   "ticker": "CSSEN"
  },
  {
   "cash_amount": 0.5,
   "declaration_date": "2022-02-10",
   "dividend_type": "CD",
   "ex_dividend_date": "2023-08-11",
   "frequency": 4,
   "pay_date": "2023-08-15",
   "record_date": "2023-08-14",
   "ticker": "AIRTP"
  }
 ],
 "status": "OK",
 "request_id": "0326f1f88a2867a7184c116f5b1edd00"
}
""")

# polygon-api-client's test fixture test_rest/mocks/v3/reference/splits.json: several tickers, no `id`.
SPLITS_CLIENT = _published("""
{
 "results": [
  {
   "execution_date": "2022-07-18",
   "split_from": 1,
   "split_to": 20,
   "ticker": "GOOGL"
  },
  {
   "execution_date": "2022-07-18",
   "split_from": 1,
   "split_to": 20,
   "ticker": "GOOG"
  },
  {
   "execution_date": "2022-07-01",
   "split_from": 1,
   "split_to": 3,
   "ticker": "CTO"
  },
  {
   "execution_date": "2022-06-29",
   "split_from": 1,
   "split_to": 10,
   "ticker": "SHOP"
  },
  {
   "execution_date": "2022-06-22",
   "split_from": 1,
   "split_to": 10,
   "ticker": "SHOP"
  },
  {
   "execution_date": "2022-06-10",
   "split_from": 1,
   "split_to": 4,
   "ticker": "DXCM"
  },
  {
   "execution_date": "2022-06-06",
   "split_from": 1,
   "split_to": 20,
   "ticker": "AMZN"
  },
  {
   "execution_date": "2022-05-20",
   "split_from": 2,
   "split_to": 1,
   "ticker": "BRW"
  },
  {
   "execution_date": "2022-05-16",
   "split_from": 1,
   "split_to": 2,
   "ticker": "CM"
  },
  {
   "execution_date": "2022-05-02",
   "split_from": 3,
   "split_to": 4,
   "ticker": "CIG.C"
  }
 ],
 "status": "OK",
 "request_id": "b52de486daf5491e6b9ebdf5e0bf65bc"
}
""")

# the spec of today (.massive/rest.json): GET
# /v2/aggs/ticker/{stocksTicker}/range/{multiplier}/{timespan}/{from}/{to}, the one example for every
# timespan; integer volumes, `n` 1. (The 2022 spec's is the same without `next_url`.)
AGGS = _published("""
{
 "adjusted": true,
 "next_url": "https://api.massive.com/v2/aggs/ticker/AAPL/range/1/day/1578114000000/2020-01-10?cursor=bGltaXQ9MiZzb3J0PWFzYw",
 "queryCount": 2,
 "request_id": "6a7e466379af0a71039d60cc78e72282",
 "results": [
  {
   "c": 75.0875,
   "h": 75.15,
   "l": 73.7975,
   "n": 1,
   "o": 74.06,
   "t": 1577941200000,
   "v": 135647456,
   "vw": 74.6099
  },
  {
   "c": 74.3575,
   "h": 75.145,
   "l": 74.125,
   "n": 1,
   "o": 74.2875,
   "t": 1578027600000,
   "v": 146535512,
   "vw": 74.7026
  }
 ],
 "resultsCount": 2,
 "status": "OK",
 "ticker": "AAPL"
}
""")

# polygon-api-client's fixture test_rest/mocks/v2/aggs/ticker/AAPL/range/1/day/2005-04-01/2005-04-04.json:
# float volumes.
AGGS_CLIENT = _published("""
{
 "ticker": "AAPL",
 "queryCount": 2,
 "resultsCount": 2,
 "adjusted": true,
 "results": [
  {
   "v": 642646396.0,
   "vw": 1.469,
   "o": 1.5032,
   "c": 1.4604,
   "h": 1.5064,
   "l": 1.4489,
   "t": 1112331600000,
   "n": 82132
  },
  {
   "v": 578172308.0,
   "vw": 1.4589,
   "o": 1.4639,
   "c": 1.4675,
   "h": 1.4754,
   "l": 1.4343,
   "t": 1112587200000,
   "n": 65543
  }
 ],
 "status": "OK",
 "request_id": "12afda77aab3b1936c5fb6ef4241ae42",
 "count": 2
}
""")

# the 2022 spec: GET /v2/snapshot/locale/us/markets/stocks/tickers. Its `min` has no `t`.
SNAPSHOT_2022 = _published("""
{
 "count": 1,
 "status": "OK",
 "tickers": [
  {
   "day": {
    "c": 20.506,
    "h": 20.64,
    "l": 20.506,
    "o": 20.64,
    "v": 37216,
    "vw": 20.616
   },
   "lastQuote": {
    "P": 20.6,
    "S": 22,
    "p": 20.5,
    "s": 13,
    "t": 1605192959994246100
   },
   "lastTrade": {
    "c": [
     14,
     41
    ],
    "i": "71675577320245",
    "p": 20.506,
    "s": 2416,
    "t": 1605192894630916600,
    "x": 4
   },
   "min": {
    "av": 37216,
    "c": 20.506,
    "h": 20.506,
    "l": 20.506,
    "o": 20.506,
    "v": 5000,
    "vw": 20.5105
   },
   "prevDay": {
    "c": 20.63,
    "h": 21,
    "l": 20.5,
    "o": 20.79,
    "v": 292738,
    "vw": 20.6939
   },
   "ticker": "BCAT",
   "todaysChange": -0.124,
   "todaysChangePerc": -0.601,
   "updated": 1605192894630916600
  }
 ]
}
""")

# the spec of today: the same endpoint; `min` carries `t` (ms) and `n`.
SNAPSHOT = _published("""
{
 "count": 1,
 "status": "OK",
 "tickers": [
  {
   "day": {
    "c": 20.506,
    "h": 20.64,
    "l": 20.506,
    "o": 20.64,
    "v": 37216,
    "vw": 20.616
   },
   "lastQuote": {
    "P": 20.6,
    "S": 22,
    "p": 20.5,
    "s": 13,
    "t": 1605192959994246100
   },
   "lastTrade": {
    "c": [
     14,
     41
    ],
    "i": "71675577320245",
    "p": 20.506,
    "s": 2416,
    "t": 1605192894630916600,
    "x": 4
   },
   "min": {
    "av": 37216,
    "c": 20.506,
    "h": 20.506,
    "l": 20.506,
    "n": 1,
    "o": 20.506,
    "t": 1684428600000,
    "v": 5000,
    "vw": 20.5105
   },
   "prevDay": {
    "c": 20.63,
    "h": 21,
    "l": 20.5,
    "o": 20.79,
    "v": 292738,
    "vw": 20.6939
   },
   "ticker": "BCAT",
   "todaysChange": -0.124,
   "todaysChangePerc": -0.601,
   "updated": 1605192894630916600
  }
 ]
}
""")

# the spec (2022 and today): GET /v2/last/trade/{stocksTicker}.
LAST_TRADE = _published("""
{
 "request_id": "f05562305bd26ced64b98ed68b3c5d96",
 "results": {
  "T": "AAPL",
  "c": [
   37
  ],
  "f": 1617901342969796400,
  "i": "118749",
  "p": 129.8473,
  "q": 3135876,
  "r": 202,
  "s": 25,
  "t": 1617901342969834000,
  "x": 4,
  "y": 1617901342968000000,
  "z": 3
 },
 "status": "OK"
}
""")

# polygon-api-client's fixture test_rest/mocks/v2/last/trade/AAPL.json.
LAST_TRADE_CLIENT = _published("""
{
 "results": {
  "c": [
   12,
   37
  ],
  "i": "237688",
  "p": 166.25,
  "s": 2,
  "x": 4,
  "r": 202,
  "z": 3,
  "T": "AAPL",
  "t": 1651179319310617300,
  "y": 1651179319308000000,
  "f": 1651179319310588400,
  "q": 7084210
 },
 "status": "OK",
 "request_id": "d4bafa50e72cf9ed19ac538ae1a3185a"
}
""")

# the spec of today: GET /v3/reference/tickers/{ticker}.
TICKER_DETAILS = _published("""
{
 "request_id": "31d59dda-80e5-4721-8496-d0d32a654afe",
 "results": {
  "active": true,
  "address": {
   "address1": "One Apple Park Way",
   "city": "Cupertino",
   "postal_code": "95014",
   "state": "CA"
  },
  "branding": {
   "icon_url": "https://api.massive.com/v1/reference/company-branding/d3d3LmFwcGxlLmNvbQ/images/2022-01-10_icon.png",
   "logo_url": "https://api.massive.com/v1/reference/company-branding/d3d3LmFwcGxlLmNvbQ/images/2022-01-10_logo.svg"
  },
  "cik": "0000320193",
  "composite_figi": "BBG000B9XRY4",
  "currency_name": "usd",
  "description": "Apple designs a wide variety of consumer electronic devices, including smartphones (iPhone), tablets (iPad), PCs (Mac), smartwatches (Apple Watch), AirPods, and TV boxes (Apple TV), among others. The iPhone makes up the majority of Apple's total revenue. In addition, Apple offers its customers a variety of services such as Apple Music, iCloud, Apple Care, Apple TV+, Apple Arcade, Apple Card, and Apple Pay, among others. Apple's products run internally developed software and semiconductors, and the firm is well known for its integration of hardware, software and services. Apple's products are distributed online as well as through company-owned stores and third-party retailers. The company generates roughly 40% of its revenue from the Americas, with the remainder earned internationally.",
  "homepage_url": "https://www.apple.com",
  "list_date": "1980-12-12",
  "locale": "us",
  "market": "stocks",
  "market_cap": 2771126040150,
  "name": "Apple Inc.",
  "phone_number": "(408) 996-1010",
  "primary_exchange": "XNAS",
  "round_lot": 100,
  "share_class_figi": "BBG001S5N8V8",
  "share_class_shares_outstanding": 16406400000,
  "sic_code": "3571",
  "sic_description": "ELECTRONIC COMPUTERS",
  "ticker": "AAPL",
  "ticker_root": "AAPL",
  "total_employees": 154000,
  "type": "CS",
  "weighted_shares_outstanding": 16334371000
 },
 "status": "OK"
}
""")
