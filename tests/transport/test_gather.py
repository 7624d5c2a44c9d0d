"""The gathering transport under asyncssh (fleetdesk/transport/gather.py), on a real loopback TCP connection.

The SSH behaviour through it is what every other test in this folder exercises against the real sshd; here: the
writes of one loop turn leave as one send, in order, and close/abort keep the transport's usual meaning.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fleetdesk.transport.gather import GatheringConnector, GatheringTransport


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


class Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def _pair() -> tuple[GatheringTransport, Client, list[Sink], Any, list[int]]:
    sinks: list[Sink] = []

    def serve() -> Sink:
        sinks.append(Sink())
        return sinks[-1]

    server = await asyncio.get_running_loop().create_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client()
    transport, protocol = await GatheringConnector().create_connection(lambda: client, "127.0.0.1", port)
    assert protocol is client and client.transport is transport and isinstance(transport, GatheringTransport)
    sends: list[int] = []
    real = transport._real
    real_write = real.write

    def counted(data: Any) -> None:
        sends.append(len(data))
        real_write(data)

    real.write = counted  # type: ignore[method-assign]
    return transport, client, sinks, server, sends


def test_the_writes_of_one_loop_turn_leave_as_one_send_in_order() -> None:
    async def go() -> None:
        transport, client, sinks, server, sends = await _pair()
        chunks = [bytes([i]) * 32768 for i in range(8)]  # eight SSH packets' worth, as one SFTP block makes
        for chunk in chunks:
            transport.write(chunk)
        assert transport.get_write_buffer_size() >= 8 * 32768 and sends == []
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sends == [8 * 32768]
        transport.write(b"tail")
        transport.close()  # what was written before close() still goes
        await asyncio.wait_for(sinks[0].closed, 10)
        assert bytes(sinks[0].data) == b"".join(chunks) + b"tail"
        assert transport.get_extra_info("peername")[0] == "127.0.0.1"
        server.close()
        await server.wait_closed()
        assert client.lost

    asyncio.run(go())


def test_abort_drops_what_was_not_sent_yet() -> None:
    async def go() -> None:
        transport, _client, sinks, server, sends = await _pair()
        transport.write(b"never")
        transport.abort()
        await asyncio.wait_for(sinks[0].closed, 10)
        assert bytes(sinks[0].data) == b"" and sends == []
        transport.write(b"after")  # a closed transport takes writes and sends nothing, as asyncio's does
        await asyncio.sleep(0.05)
        assert sends == []
        server.close()
        await server.wait_closed()

    asyncio.run(go())
