"""The proxy's sans-IO pieces: header rewriting and the HTTP heads of the upgrade path."""

from __future__ import annotations

from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from nbbridge.web import Route, Upstream
from nbbridge.web._head import BadHead, BodyReader, HeadReader, encode_request
from nbbridge.web._headers import (
    ClientFacts,
    drop_cookies,
    drop_set_cookies,
    end_to_end,
    switching_headers,
    upstream_request_headers,
    websocket_request_headers,
)

from ._proxy import BlackHoleEndpoint

ROUTE = Route(Upstream("u", BlackHoleEndpoint()))
CLIENT = ClientFacts("192.0.2.1", secure=True, host=b"lab.example")


def headers(**values: str) -> Headers:
    h = Headers()
    for name, value in values.items():
        h.addRawHeader(name.replace("_", "-").encode(), value.encode())
    return h


class HeaderTests(TestCase):
    def test_end_to_end_drops_hop_by_hop(self) -> None:
        h = headers(
            Connection="close, X-Private",
            X_Private="1",
            Keep_Alive="5",
            TE="trailers",
            Trailer="X",
            Transfer_Encoding="chunked",
            Upgrade="websocket",
            Proxy_Authorization="x",
            Proxy_Whatever="y",
            Content_Length="3",
            Accept="*/*",
        )
        kept = end_to_end(h)
        self.assertEqual(
            sorted(n.lower() for n, _ in kept.getAllRawHeaders()), [b"accept", b"content-length"]
        )
        self.assertFalse(end_to_end(h, keep_length=False).hasHeader(b"content-length"))

    def test_forwarded_replaces_untrusted(self) -> None:
        h = upstream_request_headers(
            headers(X_Forwarded_For="6.6.6.6", X_Forwarded_Proto="http", Host="lab.example"),
            ROUTE,
            CLIENT,
            trust_forwarded=False,
        )
        self.assertEqual(h.getRawHeaders(b"x-forwarded-for"), [b"192.0.2.1"])
        self.assertEqual(h.getRawHeaders(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(h.getRawHeaders(b"x-forwarded-host"), [b"lab.example"])
        self.assertEqual(h.getRawHeaders(b"host"), [b"lab.example"])

    def test_route_edits_in_order(self) -> None:
        seen: list[Headers] = []
        route = Route(
            Upstream("u", BlackHoleEndpoint()),
            host=b"127.0.0.1:8888",
            drop_cookies=["s"],
            drop_headers=["Authorization", "X-Drop"],
            set_headers={"Authorization": "token T"},
            request_headers=seen.append,
        )
        h = upstream_request_headers(
            headers(Authorization="Bearer x", X_Drop="1", Cookie="s=1; t=2", Host="a"),
            route,
            CLIENT,
            trust_forwarded=False,
        )
        self.assertEqual(h.getRawHeaders(b"authorization"), [b"token T"])
        self.assertFalse(h.hasHeader(b"x-drop"))
        self.assertEqual(h.getRawHeaders(b"cookie"), [b"t=2"])
        self.assertEqual(h.getRawHeaders(b"host"), [b"127.0.0.1:8888"])
        self.assertEqual(seen, [h])

    def test_drop_cookies_all(self) -> None:
        h = headers(Cookie="a=1; b=2")
        drop_cookies(h, ["a", "b"])
        self.assertFalse(h.hasHeader(b"cookie"))

    def test_drop_set_cookies(self) -> None:
        h = Headers()
        h.setRawHeaders(
            b"Set-Cookie",
            [b"username-127-0-0-1-8888=x; Path=/", b"_xsrf=y; Path=/", b"keep=z; HttpOnly"],
        )
        drop_set_cookies(h, lambda name: name.startswith("username-") or name == "_xsrf")
        self.assertEqual(h.getRawHeaders(b"set-cookie"), [b"keep=z; HttpOnly"])
        drop_set_cookies(h, lambda name: True)
        self.assertFalse(h.hasHeader(b"set-cookie"))

    def test_websocket_headers(self) -> None:
        received = headers(
            Connection="keep-alive, Upgrade",
            Upgrade="websocket",
            Sec_WebSocket_Key="k",
            Sec_WebSocket_Protocol="v1.kernel.websocket.jupyter.org",
            Sec_WebSocket_Version="13",
        )
        h = websocket_request_headers(received, ROUTE, CLIENT, trust_forwarded=False)
        self.assertEqual(h.getRawHeaders(b"connection"), [b"Upgrade"])
        self.assertEqual(h.getRawHeaders(b"upgrade"), [b"websocket"])
        self.assertEqual(h.getRawHeaders(b"sec-websocket-key"), [b"k"])
        answer = headers(
            Upgrade="websocket",
            Connection="Upgrade",
            Sec_WebSocket_Accept="a",
            Sec_WebSocket_Protocol="v1.kernel.websocket.jupyter.org",
        )
        out = switching_headers(answer, ROUTE)
        self.assertEqual(out.getRawHeaders(b"sec-websocket-accept"), [b"a"])
        self.assertEqual(out.getRawHeaders(b"connection"), [b"Upgrade"])
        self.assertEqual(out.getRawHeaders(b"upgrade"), [b"websocket"])


class HeadTests(TestCase):
    def test_encode_request(self) -> None:
        self.assertEqual(
            encode_request(b"GET", b"/x", headers(Host="h")), b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
        )

    def test_head_in_pieces_with_leftover(self) -> None:
        reader = HeadReader()
        answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi"
        for i in range(len(answer) - 5):
            self.assertIsNone(reader.feed(answer[i : i + 1]))
        parsed = reader.feed(answer[len(answer) - 5 :])
        assert parsed is not None
        head, leftover = parsed
        self.assertEqual((head.code, head.phrase), (101, b"Switching Protocols"))
        self.assertEqual(head.headers.getRawHeaders(b"upgrade"), [b"websocket"])
        self.assertEqual(leftover, b"\x81\x02hi")

    def test_interim_skipped(self) -> None:
        parsed = HeadReader().feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 No\r\n\r\n")
        assert parsed is not None
        self.assertEqual(parsed[0].code, 403)

    def test_bad_heads(self) -> None:
        for bad in (b"SSH-2.0-x\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n", b"HTTP/1.1 200 OK\r\nx\r\n\r\n"):
            with self.assertRaises(BadHead):
                HeadReader().feed(bad)
        with self.assertRaises(BadHead):
            HeadReader().feed(b"x" * (70 * 1024))

    def test_body_length(self) -> None:
        body = BodyReader(headers(Content_Length="5"))
        self.assertFalse(body.feed(b"he"))
        self.assertTrue(body.feed(b"llo and more"))
        self.assertEqual(body.body, b"hello")

    def test_body_chunked(self) -> None:
        body = BodyReader(headers(Transfer_Encoding="chunked"))
        data = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
        done = [body.feed(data[i : i + 1]) for i in range(len(data))]
        self.assertTrue(done[-1])
        self.assertEqual(body.body, b"hello world")

    def test_body_until_close_and_bounded(self) -> None:
        body = BodyReader(headers(), limit=4)
        self.assertFalse(body.feed(b"abcdef"))
        self.assertTrue(body.close())
        self.assertEqual(body.body, b"abcd")
        self.assertTrue(body.truncated)

    def test_no_body(self) -> None:
        self.assertTrue(BodyReader(headers(Content_Length="9"), no_body=True).done)
