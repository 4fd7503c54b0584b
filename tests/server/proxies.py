"""A TCP proxy the server tests put between a client and a server to cut the network."""

from __future__ import annotations

import asyncio
import random


class SeveringProxy:
    """TCP between the client and the server, which ``sever`` cuts: it aborts every
    connection it carries (``silent=False``: both ends see the cut at once) or leaves them
    open and carries nothing more (``silent=True``: a partition, as a network's; each end
    finds out by its own timeouts, and a close from one end reaches the other only once the
    network heals). Till ``heal`` it closes each new connection at once. The server, alive,
    keeps what it holds."""

    def __init__(self, port: int) -> None:
        self.port, self.down = port, False
        self.silent = False  # how ``sever`` cuts unless told
        self.severed = 0  # partitions so far
        self._writers: set[asyncio.StreamWriter] = set()
        self._healed = asyncio.Event()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def sever(self, silent: bool | None = None) -> None:
        self.severed += not self.down
        self.down = True
        self._healed.clear()
        if not (self.silent if silent is None else silent):
            for w in list(self._writers):
                w.transport.abort()

    def heal(self) -> None:
        self.down = False
        self._healed.set()

    async def stop(self) -> None:
        self.sever()
        self.heal()
        self.server.close()

    async def _serve(self, client_r, client_w) -> None:
        if self.down:
            client_w.transport.abort()
            return
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers |= {client_w, server_w}

        async def pipe(r, w) -> None:
            try:
                while data := await r.read(4096):
                    if not self.down:  # (down: lost in the partition)
                        w.write(data)
                        await w.drain()
            except OSError:
                pass
            finally:
                if self.down:  # the close crosses the network once it heals
                    await self._healed.wait()
                w.transport.abort()
                self._writers.discard(w)

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))


class DroppingProxy:
    """TCP between the client and the server; each connection is aborted (both sides) once
    it has carried a random number of bytes (exponential, ``mean``), unless ``paused``."""

    def __init__(self, port: int, rnd: random.Random, mean: float) -> None:
        self.port, self.rnd, self.mean = port, rnd, mean
        self.drops, self.paused = 0, False

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, client_r, client_w) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            client_w.close()
            return
        left = [int(self.rnd.expovariate(1 / self.mean)) + 200]

        async def pipe(r, w) -> None:
            try:
                while data := await r.read(4096):
                    left[0] -= 0 if self.paused else len(data)
                    if left[0] < 0:
                        self.drops += 1
                        client_w.transport.abort()
                        server_w.transport.abort()
                        return
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
