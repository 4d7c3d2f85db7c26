"""``ip netns exec NS python -m lab.client URL --relays JSON [--region CODE]``: one caller.

Runs inside a client host: a real aiortc WHIP call through its NAT (echo ratio, the region
signaling chose and why), then STUN Binding round trips to every region's relay (first-hop
RTT). Prints one JSON object. Needs ``UFRAG_KEYS`` to mint the relays' health ufrag and
``WHIP_TOKEN`` (the lab's API key) to be let in.
``--hold S``: one long call reporting when each echo arrived; ``--offer-loop S``: offers only,
each request's status and timing (the fault tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from urllib.parse import urljoin

from aiortc import RTCConfiguration, RTCPeerConnection

from fleet.addresses import parse_addr
from health.probes import health_username, stun_ping
from relays.ufrag import parse_keyring
from whip.client import Call, ToneTrack, WhipError, bearer, http_request

PINGS = 10
PING_GAP = 0.02
TOKEN = os.environ.get("WHIP_TOKEN") or None  # the lab's API key (AUTH_REQUIRED=1)


async def place_call(url: str, region: str | None, seconds: float) -> dict[str, object]:
    call = Call(url, seconds=seconds, region=region, token=TOKEN)
    started = time.monotonic()
    await call.start()
    try:
        await call.wait_connected(timeout=15)
        connected = time.monotonic() - started
        await call.play()
    finally:
        await call.stop()
    headers = call.response_headers
    return {"region": headers.get("X-Region"), "reason": headers.get("X-Region-Reason"),
            "relay_shard": headers.get("X-Relay-Shard"),
            "transceiver": headers.get("X-Transceiver"), "connect_s": round(connected, 3),
            "echo_ratio": round(call.echo_ratio(), 4), "tone_sent": call.track.tone_sent,
            "tone_back": call.received.tone_frames}


async def offer_until_fallback(url: str, timeout: float) -> dict[str, object]:
    """Offer (POST, then DELETE) until signaling answers with a ``fallback:`` reason; report
    when (``time.monotonic``, the clock every namespace shares)."""
    deadline = time.monotonic() + timeout
    tries, last = 0, ""
    announced = False
    while time.monotonic() < deadline:
        call = Call(url, seconds=0.1, token=TOKEN)
        tries += 1
        try:
            await call.start()
            last = call.response_headers.get("X-Region-Reason", "")
            region = call.response_headers.get("X-Region")
        except WhipError as exc:
            last = f"HTTP {exc.status}"
            region = None
        answered = time.monotonic()
        await call.stop()
        if last.startswith("fallback:"):
            return {"at": answered, "region": region, "reason": last, "tries": tries}
        if not announced:  # the caller may break the fleet now: offers are flowing
            sys.stdout.write(json.dumps({"offering": {"region": region, "reason": last}}) + "\n")
            sys.stdout.flush()
            announced = True
        await asyncio.sleep(0.1)
    return {"at": None, "reason": last, "tries": tries}


def announce(line: dict[str, object]) -> None:
    """One JSON line the test reads while this caller keeps going."""
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def hold_call(url: str, region: str | None, seconds: float) -> dict[str, object]:
    """A call sending its tone for ``seconds`` (or until SIGTERM); announces itself once
    connected, then reports when (``time.monotonic``) each echoed RTP packet and each echoed
    tone frame arrived."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    call = Call(url, seconds=seconds, region=region, token=TOKEN)
    await call.start()
    try:
        await call.wait_connected(timeout=15)
        headers = call.response_headers
        announce({"connected": {"region": headers.get("X-Region"),
                                "transceiver": headers.get("X-Transceiver"),
                                "relay_shard": headers.get("X-Relay-Shard"),
                                "location": call.location, "at": call.connected_at}})
        while call.track.tone_sent < call.track.tone_frames and not stop.is_set():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        await call.stop()
    received = call.received
    return {"tone_sent": call.track.tone_sent, "echo_ratio": round(call.echo_ratio(), 4),
            "rtp_times": [round(t, 4) for t in received.rtp_times],
            "tone_times": [round(t, 4) for t, ok in zip(received.times, received.tone,
                                                        strict=True) if ok]}


async def offer_sdp() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(ToneTrack(seconds=1.0))
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


def offer_loop(url: str, seconds: float, gap: float) -> list[list[object]]:
    """POST one offer every ``gap`` s for ``seconds`` (DELETE each session made); each request
    as [method, sent, answered (monotonic), status, X-Region]; status 0: no HTTP answer."""
    sdp = asyncio.run(offer_sdp()).encode()
    announce({"offering": True})
    requests: list[list[object]] = []
    deadline = time.monotonic() + seconds
    while (sent := time.monotonic()) < deadline:
        try:
            status, headers, _ = http_request("POST", url + "/v1/sessions", sdp,
                                              {"Content-Type": "application/sdp",
                                               **bearer(TOKEN)}, timeout=10)
        except OSError:
            status, headers = 0, {}
        requests.append(["POST", sent, time.monotonic(), status, headers.get("X-Region")])
        if status == 201:
            deleted = time.monotonic()
            try:
                status, _, _ = http_request("DELETE", urljoin(url, headers["Location"]), b"",
                                            bearer(TOKEN), timeout=10)
            except OSError:
                status = 0
            requests.append(["DELETE", deleted, time.monotonic(), status, None])
        time.sleep(max(0.0, sent + gap - time.monotonic()))
    return requests


def first_hop_rtts(relays: dict[str, dict[str, object]]
                   ) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """(minimum, median) of PINGS STUN round trips (ms) to each relay's public address; None:
    no answer. The minimum is the path's base RTT: scheduling noise only ever adds to it."""
    keyring = parse_keyring(os.environ["UFRAG_KEYS"])
    key_id = next(iter(keyring))
    rtts: dict[str, float | None] = {}
    medians: dict[str, float | None] = {}
    for code, relay in relays.items():
        target = parse_addr(str(relay["public"]))
        username = health_username(shard=int(str(relay["shard"])), key_id=key_id,
                                   key=keyring[key_id])
        samples = []
        for _ in range(PINGS):
            try:
                rtt, _mapped = stun_ping(target, username=username, timeout=1.0)
                samples.append(rtt * 1000)
            except (TimeoutError, OSError):
                pass
            time.sleep(PING_GAP)
        rtts[code] = round(min(samples), 3) if samples else None
        medians[code] = round(statistics.median(samples), 3) if samples else None
    return rtts, medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--relays", required=True, help="lab.json's relays object (JSON)")
    parser.add_argument("--region", default=None, help="pin a region (?region=)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-call", action="store_true", help="only measure first-hop RTTs")
    parser.add_argument("--until-fallback", type=float, metavar="SECONDS",
                        help="only offer until signaling falls back; report when")
    parser.add_argument("--hold", type=float, metavar="SECONDS",
                        help="one call sending its tone this long; report arrival times")
    parser.add_argument("--offer-loop", type=float, metavar="SECONDS",
                        help="only POST (and DELETE) offers this long; report each request")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between loop offers")
    args = parser.parse_args()
    result: dict[str, object] = {}
    if args.hold:
        result["held"] = asyncio.run(hold_call(args.url, args.region, args.hold))
        announce(result)
        return 0
    if args.offer_loop:
        result["requests"] = offer_loop(args.url, args.offer_loop, args.gap)
        announce(result)
        return 0
    if args.until_fallback:
        result["fallback"] = asyncio.run(offer_until_fallback(args.url, args.until_fallback))
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    result["rtt_ms"], result["rtt_median_ms"] = first_hop_rtts(json.loads(args.relays))
    if not args.no_call:
        try:
            result["call"] = asyncio.run(place_call(args.url, args.region, args.seconds))
        except (WhipError, TimeoutError, OSError) as exc:
            result["call"] = {"error": str(exc)}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
