"""``python -m lab.delayline --config FILE [--tun NAME]``: the WAN delay line's TUN shell.

Run inside the WAN router's namespace. Reads every packet routed into the TUN device and
writes it back after its link's one-way delay (``lab.delay``); the kernel then forwards it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import random
import select
import signal
import struct
import time
from pathlib import Path
from types import FrameType

from lab.delay import DelayLine, parse_delay_config

logger = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA  # linux/if_tun.h
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65535
MAX_BATCH = 256  # packets read per wake-up before releasing due ones
STATS_EVERY = 30.0


class _Stop(Exception):
    pass


def open_tun(name: str) -> int:
    """Attach to (or create) TUN device ``name`` without packet info; non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _read_batch(fd: int, line: DelayLine, rng: random.Random) -> None:
    for _ in range(MAX_BATCH):
        try:
            packet = os.read(fd, MAX_PACKET)
        except BlockingIOError:
            return
        line.push(packet, time.monotonic(), rng.random())


def _write_due(fd: int, line: DelayLine) -> None:
    for packet in line.pop_due(time.monotonic()):
        try:
            os.write(fd, packet)
        except OSError as exc:  # e.g. the device went down: the packet is lost, as on a wire
            logger.debug("tun write failed: %s", exc)


def run(fd: int, line: DelayLine, rng: random.Random) -> None:
    """Until SIGTERM/SIGINT: sleep until a packet arrives or the earliest one is due."""
    last_stats = time.monotonic()
    while True:
        due = line.next_due()
        timeout = 1.0 if due is None else max(0.0, due - time.monotonic())
        readable, _, _ = select.select([fd], [], [], timeout)
        if readable:
            _read_batch(fd, line, rng)
        _write_due(fd, line)
        if time.monotonic() - last_stats > STATS_EVERY:
            last_stats = time.monotonic()
            logger.info("delay line: %s, %d queued", dict(line.counts), len(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--tun", default="dl0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    line = DelayLine(parse_delay_config(json.loads(args.config.read_text())))
    fd = open_tun(args.tun)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("delay line on %s: %d sites, loss %.3f", args.tun, len(line.config.sites),
                line.config.loss)
    try:
        run(fd, line, random.Random())
    except _Stop:
        pass
    finally:
        os.close(fd)
        logger.info("delay line stopped: %s", dict(line.counts))


if __name__ == "__main__":
    main()
