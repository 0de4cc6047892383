"""Polygon's documented examples for trades and quotes, as published: what the stand-ins serve
and send, so tests check ChronoX against what Polygon says it sends.

Sources (polygon-api-client, github.com/polygon-io/client-python, commit 5d9c756, Oct 2025): its
OpenAPI specs (.massive/rest.json: GET /v3/trades/{stockTicker} and /v3/quotes/{stockTicker};
.massive/websocket.json: the stocks cluster's T and Q events), the source of the examples on
Polygon's documentation pages, and its own test fixtures (test_rest/mocks/v3/). The day-file
lines are the header and first rows Polygon shows for us_stocks_sip/trades_v1 (its flat-files
page and its "Deep Dive into Trade-Level Data with Flat Files" post of Apr 12, 2024).
"""
# ruff: noqa: E501 (the payloads keep their published lines)
from __future__ import annotations

import json
from typing import Any


def _published(text: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(text)
    return payload


# the spec: GET /v3/trades/{stockTicker}, 200 example.
TRADES = _published("""
{
 "next_url": "https://api.massive.com/v3/trades/AAPL?cursor=YWN0aXZlPXRydWUmZGF0ZT0yMDIxLTA0LTI1JmxpbWl0PTEmb3JkZXI9YXNjJnBhZ2VfbWFya2VyPUElN0M5YWRjMjY0ZTgyM2E1ZjBiOGUyNDc5YmZiOGE1YmYwNDVkYzU0YjgwMDcyMWE2YmI1ZjBjMjQwMjU4MjFmNGZiJnNvcnQ9dGlja2Vy",
 "request_id": "a47d1beb8c11b6ae897ab76cdbbf35a3",
 "results": [
  {
   "conditions": [
    12,
    41
   ],
   "exchange": 11,
   "id": "1",
   "participant_timestamp": 1517562000015577000,
   "price": 171.55,
   "sequence_number": 1063,
   "sip_timestamp": 1517562000016036600,
   "size": 100,
   "tape": 3
  },
  {
   "conditions": [
    12,
    41
   ],
   "exchange": 11,
   "id": "2",
   "participant_timestamp": 1517562000015577600,
   "price": 171.55,
   "sequence_number": 1064,
   "sip_timestamp": 1517562000016038100,
   "size": 100,
   "tape": 3
  }
 ],
 "status": "OK"
}
""")

# the spec: GET /v3/quotes/{stockTicker}, 200 example (a quote with no ask side: price, size and exchange 0).
QUOTES = _published("""
{
 "next_url": "https://api.massive.com/v3/quotes/AAPL?cursor=YWN0aXZlPXRydWUmZGF0ZT0yMDIxLTA0LTI1JmxpbWl0PTEmb3JkZXI9YXNjJnBhZ2VfbWFya2VyPUElN0M5YWRjMjY0ZTgyM2E1ZjBiOGUyNDc5YmZiOGE1YmYwNDVkYzU0YjgwMDcyMWE2YmI1ZjBjMjQwMjU4MjFmNGZiJnNvcnQ9dGlja2Vy",
 "request_id": "a47d1beb8c11b6ae897ab76cdbbf35a3",
 "results": [
  {
   "ask_exchange": 0,
   "ask_price": 0,
   "ask_size": 0,
   "bid_exchange": 11,
   "bid_price": 102.7,
   "bid_size": 60,
   "conditions": [
    1
   ],
   "participant_timestamp": 1517562000065321200,
   "sequence_number": 2060,
   "sip_timestamp": 1517562000065700400,
   "tape": 3
  },
  {
   "ask_exchange": 0,
   "ask_price": 0,
   "ask_size": 0,
   "bid_exchange": 11,
   "bid_price": 170,
   "bid_size": 2,
   "conditions": [
    1
   ],
   "participant_timestamp": 1517562000065408300,
   "sequence_number": 2061,
   "sip_timestamp": 1517562000065791500,
   "tape": 3
  }
 ],
 "status": "OK"
}
""")

# the client's fixture test_rest/mocks/v3/trades/AAPL&limit=2.json: two records with one SIP timestamp
# and sequence number (a duplicate by ChronoX's key), both with correction 1 and a TRF.
TRADES_CLIENT = _published("""
{
 "results": [
  {
   "conditions": [
    12,
    37
   ],
   "correction": 1,
   "exchange": 11,
   "id": "183276",
   "participant_timestamp": 1651181822461636600,
   "price": 156.43,
   "sequence_number": 7179341,
   "sip_timestamp": 1651181822461979400,
   "size": 10,
   "tape": 3,
   "trf_id": 3,
   "trf_timestamp": 1651181557090806500
  },
  {
   "conditions": [
    12,
    37
   ],
   "correction": 1,
   "exchange": 12,
   "id": "183276",
   "participant_timestamp": 1651181822461636600,
   "price": 157.43,
   "sequence_number": 7179341,
   "sip_timestamp": 1651181822461979400,
   "size": 10,
   "tape": 3,
   "trf_id": 3,
   "trf_timestamp": 1651181557090806500
  }
 ],
 "status": "OK",
 "request_id": "756f9910624b35a47eb07f21a7a373bb"
}
""")

# the client's fixture test_rest/mocks/v3/quotes/AAPL.json: the first page (newest first, order desc).
QUOTES_CLIENT = _published("""
{
 "results": [
  {
   "ask_exchange": 15,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 19,
   "bid_price": 155.85,
   "bid_size": 4,
   "participant_timestamp": 1652191872800402200,
   "sequence_number": 19288684,
   "sip_timestamp": 1652191872800638700,
   "tape": 3
  },
  {
   "ask_exchange": 15,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 15,
   "bid_price": 155.85,
   "bid_size": 5,
   "participant_timestamp": 1652191872774195000,
   "sequence_number": 19288618,
   "sip_timestamp": 1652191872774441200,
   "tape": 3
  },
  {
   "ask_exchange": 15,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 19,
   "bid_price": 155.85,
   "bid_size": 4,
   "participant_timestamp": 1652191872773756000,
   "sequence_number": 19288617,
   "sip_timestamp": 1652191872773945300,
   "tape": 3
  },
  {
   "ask_exchange": 15,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 12,
   "bid_price": 155.85,
   "bid_size": 3,
   "participant_timestamp": 1652191872753255000,
   "sequence_number": 19288557,
   "sip_timestamp": 1652191872753443000,
   "tape": 3
  },
  {
   "ask_exchange": 15,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 19,
   "bid_price": 155.85,
   "bid_size": 3,
   "participant_timestamp": 1652191872751394300,
   "sequence_number": 19288549,
   "sip_timestamp": 1652191872751569400,
   "tape": 3
  },
  {
   "ask_exchange": 15,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 21,
   "bid_price": 155.86,
   "bid_size": 1,
   "participant_timestamp": 1652191872750485800,
   "sequence_number": 19288528,
   "sip_timestamp": 1652191872750826800,
   "tape": 3
  },
  {
   "ask_exchange": 15,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 11,
   "bid_price": 155.86,
   "bid_size": 1,
   "participant_timestamp": 1652191872750458400,
   "sequence_number": 19288525,
   "sip_timestamp": 1652191872750633000,
   "tape": 3
  },
  {
   "ask_exchange": 15,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 21,
   "bid_price": 155.86,
   "bid_size": 2,
   "participant_timestamp": 1652191872750206000,
   "sequence_number": 19288519,
   "sip_timestamp": 1652191872750488300,
   "tape": 3
  },
  {
   "ask_exchange": 19,
   "ask_price": 155.87,
   "ask_size": 1,
   "bid_exchange": 21,
   "bid_price": 155.86,
   "bid_size": 2,
   "participant_timestamp": 1652191872748910000,
   "sequence_number": 19288491,
   "sip_timestamp": 1652191872749094400,
   "tape": 3
  },
  {
   "ask_exchange": 19,
   "ask_price": 155.87,
   "ask_size": 2,
   "bid_exchange": 21,
   "bid_price": 155.86,
   "bid_size": 2,
   "participant_timestamp": 1652191872690425000,
   "sequence_number": 19288166,
   "sip_timestamp": 1652191872690661000,
   "tape": 3
  }
 ],
 "status": "OK",
 "request_id": "280bc9f4c6d0ba24a819f0d153b15d85",
 "next_url": "https://api.massive.com/v3/quotes/AAPL?cursor=YXA9MTkyODgxNjYmYXM9JmxpbWl0PTEwJm9yZGVyPWRlc2Mmc29ydD10aW1lc3RhbXAmdGltZXN0YW1wLmx0ZT0yMDIyLTA1LTEwVDE0JTNBMTElM0ExMi42OTA2NjExODla"
}
""")

# its second page (the fixture for the first page's next_url).
QUOTES_CLIENT_NEXT = _published("""
{
 "results": [
  {
   "ask_exchange": 19,
   "ask_price": 155.87,
   "ask_size": 2,
   "bid_exchange": 19,
   "bid_price": 155.86,
   "bid_size": 1,
   "participant_timestamp": 1652191872690177000,
   "sequence_number": 19288135,
   "sip_timestamp": 1652191872690386918,
   "tape": 3
  },
  {
   "ask_exchange": 19,
   "ask_price": 155.87,
   "ask_size": 2,
   "bid_exchange": 15,
   "bid_price": 155.85,
   "bid_size": 5,
   "participant_timestamp": 1652191872688200000,
   "sequence_number": 19288101,
   "sip_timestamp": 1652191872688383612,
   "tape": 3
  },
  {
   "ask_exchange": 19,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 15,
   "bid_price": 155.85,
   "bid_size": 5,
   "participant_timestamp": 1652191872687729447,
   "sequence_number": 19288096,
   "sip_timestamp": 1652191872687968794,
   "tape": 3
  },
  {
   "ask_exchange": 19,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 19,
   "bid_price": 155.85,
   "bid_size": 4,
   "participant_timestamp": 1652191872686891199,
   "sequence_number": 19288093,
   "sip_timestamp": 1652191872687168881,
   "tape": 3
  },
  {
   "ask_exchange": 15,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 19,
   "bid_price": 155.85,
   "bid_size": 4,
   "participant_timestamp": 1652191872677145000,
   "sequence_number": 19288051,
   "sip_timestamp": 1652191872677330035,
   "tape": 3
  },
  {
   "ask_exchange": 19,
   "ask_price": 155.87,
   "ask_size": 4,
   "bid_exchange": 19,
   "bid_price": 155.85,
   "bid_size": 4,
   "participant_timestamp": 1652191872676782000,
   "sequence_number": 19288049,
   "sip_timestamp": 1652191872676973864,
   "tape": 3
  },
  {
   "ask_exchange": 19,
   "ask_price": 155.87,
   "ask_size": 4,
   "bid_exchange": 19,
   "bid_price": 155.85,
   "bid_size": 3,
   "participant_timestamp": 1652191872664864000,
   "sequence_number": 19288026,
   "sip_timestamp": 1652191872665047506,
   "tape": 3
  },
  {
   "ask_exchange": 19,
   "ask_price": 155.87,
   "ask_size": 4,
   "bid_exchange": 19,
   "bid_price": 155.85,
   "bid_size": 4,
   "participant_timestamp": 1652191872663336000,
   "sequence_number": 19288010,
   "sip_timestamp": 1652191872663527001,
   "tape": 3
  },
  {
   "ask_exchange": 19,
   "ask_price": 155.87,
   "ask_size": 3,
   "bid_exchange": 19,
   "bid_price": 155.85,
   "bid_size": 4,
   "participant_timestamp": 1652191872663291000,
   "sequence_number": 19288009,
   "sip_timestamp": 1652191872663480163,
   "tape": 3
  },
  {
   "ask_exchange": 19,
   "ask_price": 155.87,
   "ask_size": 2,
   "bid_exchange": 19,
   "bid_price": 155.85,
   "bid_size": 4,
   "participant_timestamp": 1652191872663233957,
   "sequence_number": 19288004,
   "sip_timestamp": 1652191872663407429,
   "tape": 3
  }
 ],
 "status": "OK",
 "request_id": "74f65a8eee41f475f5a05e31059a9245"
}
""")

# websocket spec: the stocks cluster's trade event (`T.<ticker>`); t is the SIP time in epoch milliseconds.
T_EVENT = _published("""
{
 "ev": "T",
 "sym": "MSFT",
 "x": 4,
 "i": "12345",
 "z": 3,
 "p": 114.125,
 "s": 100,
 "c": [
  0,
  12
 ],
 "t": 1536036818784,
 "q": 3681328
}
""")

# websocket spec: the stocks cluster's quote event (`Q.<ticker>`); c is one condition, i the indicators.
Q_EVENT = _published("""
{
 "ev": "Q",
 "sym": "MSFT",
 "bx": 4,
 "bp": 114.125,
 "bs": 100,
 "ax": 7,
 "ap": 114.128,
 "as": 160,
 "c": 0,
 "i": [
  604
 ],
 "t": 1536036818784,
 "q": 50385480,
 "z": 3
}
""")

# The trades day file's header and first rows as Polygon shows them (conditions quoted when
# there are several; trf_id and trf_timestamp 0 for a trade reported by an exchange).
TRADES_FILE_LINES = (
    "ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,sip_timestamp,size,tape,trf_id,trf_timestamp",
    'A,"12,37",0,11,52983525035312,1712306654208705342,142.99,3807,1712306654208740096,5,1,0,0',
    'A,"12,37",0,11,52983525035313,1712306654208705342,143,3808,1712306654208743168,8,1,0,0',
    "A,12,0,11,52983525035314,1712306654429439337,143,3809,1712306654429468160,187,1,0,0",
)
# The quotes day file's columns (us_stocks_sip/quotes_v1), in Polygon's order.
QUOTES_FILE_HEADER = ("ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,"
                      "participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp")
