"""Benchmark: the agent's DNS server's answer latency, against a trivial UDP echo server in the same process.

Both servers run on loopback in one asyncio loop; the client sends one dnslib query at a time (build,
send, receive, parse, as a resolver does) and times each round trip. The baseline is the same client
against an echo server that sends the query straight back: the cost of the loop, the sockets and dnslib's
packing, with no lookup. The ratio (dockyard p50 / echo p50) is what the lookup adds; absolute p50/p99 are
printed too. The table holds --names names (a realistic cluster has hundreds); queries cycle over them
and a fifth go to names that are not there (NXDOMAIN). Then it measures how long a delta takes to show in
answers: the time from applying it to the first answer that carries it (the controller batches deltas for
<= 200 ms; this is the agent's part, which is immediate).

Run: PYTHONPATH=. python bench/dns.py [--queries 5000] [--names 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from ipaddress import IPv4Address

from dnslib import DNSRecord

from agent.network.dns import DnsServer, NameTable
from dockyard.v1 import agent_pb2 as apb

LOOPBACK = "127.0.0.1"


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind((LOOPBACK, 0))
        port = int(udp.getsockname()[1])
        tcp.bind((LOOPBACK, port))
        return port


async def _timed(port: int, names: list[str], count: int) -> list[float]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, (LOOPBACK, port))
    samples: list[float] = []
    try:
        for i in range(count):
            started = time.perf_counter()
            await loop.sock_sendall(sock, DNSRecord.question(names[i % len(names)]).pack())
            DNSRecord.parse(await loop.sock_recv(sock, 4096))
            samples.append(time.perf_counter() - started)
    finally:
        sock.close()
    return samples


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


async def _delta_visible(server: DnsServer, table: NameTable) -> float:
    """Seconds from applying a delta to the first answer that carries it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, (LOOPBACK, server.port))
    try:
        started = time.perf_counter()
        table.apply(
            apb.DnsTable(
                version=table.version + 1, records=[apb.DnsRecord(name="fresh.dockyard", addresses=["10.128.9.9"])]
            )
        )
        while True:
            await loop.sock_sendall(sock, DNSRecord.question("fresh.dockyard").pack())
            reply = DNSRecord.parse(await loop.sock_recv(sock, 4096))
            if reply.rr:
                return time.perf_counter() - started
    finally:
        sock.close()


async def main(queries: int, count: int, rounds: int) -> None:
    """Runs the rounds and prints one line per round and a summary."""
    table = NameTable()
    records = [
        apb.DnsRecord(name=f"svc{i}.stack{i % 7}.dockyard", addresses=[f"10.128.{i % 250}.{2 + i % 200}"])
        for i in range(count)
    ]
    table.apply(apb.DnsTable(version=1, full=True, records=records))
    names = [r.name for r in records]
    asked = [name if i % 5 else f"missing{i}.dockyard" for i, name in enumerate(names)]

    server = DnsServer(table, port=_free_port(), upstreams=lambda: [])
    await server.listen_on([IPv4Address(LOOPBACK)], {})
    loop = asyncio.get_running_loop()
    echo_port = _free_port()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(LOOPBACK, echo_port))
    try:
        await _timed(server.port, asked, 200)  # warm-up
        await _timed(echo_port, asked, 200)
        ratios = []
        for round_ in range(1, rounds + 1):
            base = await _timed(echo_port, asked, queries)
            ours = await _timed(server.port, asked, queries)
            ratio = statistics.median(ours) / statistics.median(base)
            ratios.append(ratio)
            print(
                f"round {round_}: dockyard p50 {_pct(ours, 0.5):.0f} us p99 {_pct(ours, 0.99):.0f} us | "
                f"echo p50 {_pct(base, 0.5):.0f} us p99 {_pct(base, 0.99):.0f} us | ratio {ratio:.2f}"
            )
        visible = [await _delta_visible(server, table) for _ in range(5)]
        print(
            f"summary: {queries} queries x {rounds} rounds, {count} names; "
            f"median ratio {statistics.median(ratios):.2f}; "
            f"a delta shows in answers after {max(visible) * 1e3:.2f} ms at most"
        )
    finally:
        echo.close()
        await server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--names", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.queries, args.names, args.rounds))
