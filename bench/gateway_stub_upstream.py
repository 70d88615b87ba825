"""A minimal upstream for gateway benchmarks: keep-alive HTTP/1.1, answers every request with
``{"data": {"ok": true}}`` (the /gateway/handle contract) at a few µs of CPU, so the upstream is never
what a routed-event benchmark measures.

    python bench/gateway_stub_upstream.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

BODY = b'{"data":{"ok":true}}'
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)


class StubUpstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.transport.write(RESPONSE)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(StubUpstream, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
