"""Delay and loss for traffic towards one lab device, in user space over NFQUEUE.

This machine's kernel has no netem (CONFIG_NET_SCH_NETEM is not set), but it has NFQUEUE: an
iptables rule hands each packet for the device to this process, which drops PCT percent of them
and lets the rest through after MS milliseconds. It speaks the nfnetlink_queue protocol itself
(linux/netfilter/nfnetlink_queue.h), so it needs nothing beyond the standard library.

    python -m fleetdesk.lab.shaper --queue N [--delay-ms MS] [--loss-pct PCT]
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_DROP = 0
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _message(msg_type: int, queue: int, attrs: bytes, seq: int) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg_type
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def bind_queue(sock: socket.socket, queue: int) -> None:
    """Bind to queue `queue` and ask for packet metadata only (the id is all a verdict needs)."""
    cmd = _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, cmd, 1))
    params = _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, params, 2))


def packet_ids(data: bytes) -> list[int]:
    """The packet ids in one netlink read; errors from the kernel raise OSError."""
    ids = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
            if errno:
                raise OSError(-errno, os.strerror(-errno))
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            pos = offset + _NLMSGHDR.size + _NFGENMSG.size
            end = offset + length
            while pos + 4 <= end:
                attr_len, attr_type = struct.unpack_from("=HH", data, pos)
                if attr_len < 4:
                    break
                if attr_type & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, pos + 4)[0])
                pos += (attr_len + 3) & ~3
        offset += (length + 3) & ~3
    return ids


def verdict(sock: socket.socket, queue: int, packet_id: int, accept: bool) -> None:
    attrs = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT if accept else NF_DROP, packet_id))
    sock.send(_message(NFQNL_MSG_VERDICT, queue, attrs, 0))


def run(queue: int, delay_ms: float, loss_pct: float) -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    bind_queue(sock, queue)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pending: list[tuple[float, int]] = []  # (release time, packet id)
    delay = delay_ms / 1000.0
    while not stopping:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else 0.5
        try:
            readable, _, _ = select.select([sock], [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        if readable:
            for packet_id in packet_ids(sock.recv(1 << 16)):
                if loss_pct and random.uniform(0, 100) < loss_pct:  # noqa: S311 - simulated loss, not crypto
                    verdict(sock, queue, packet_id, accept=False)
                elif delay:
                    heapq.heappush(pending, (now + delay, packet_id))
                else:
                    verdict(sock, queue, packet_id, accept=True)
        while pending and pending[0][0] <= time.monotonic():
            verdict(sock, queue, heapq.heappop(pending)[1], accept=True)
    for _, packet_id in pending:  # let what is held go on the way out
        verdict(sock, queue, packet_id, accept=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetdesk.lab.shaper", description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loss-pct", type=float, default=0.0)
    parser.add_argument("--lab-dir", default="", help="recorded so that `lab down` can find this process")
    args = parser.parse_args(argv)
    try:
        return run(args.queue, args.delay_ms, args.loss_pct)
    except OSError as exc:
        print(f"shaper: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
