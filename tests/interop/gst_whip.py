"""A WHIP caller on GStreamer's webrtcbin (libnice ICE, GStreamer's own DTLS agent).

Run by Debian's python3 (it has ``gi``; the project's venv does not), from
``tests/interop/test_gstreamer.py``. Usage: ``gst_whip.py URL SECONDS``. Publishes a 440 Hz tone
(audiotestsrc, opusenc, rtpopuspay), POSTs the offer (RFC 9725 §4.2), applies the answer, counts
the RTP packets sent and the echo's RTP and decoded buffers, DELETEs the session, prints one
JSON line, exits 0.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

PIPELINE = (
    "webrtcbin name=wb bundle-policy=max-bundle "
    "audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audioconvert ! audioresample "
    "! audio/x-raw,rate=48000,channels=1 ! opusenc frame-size=20 ! rtpopuspay pt=111 name=pay "
    "! application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload=111 ! wb."
)


class Caller:
    """One WHIP call: offer, POST, answer, then count packets both ways until the deadline."""

    def __init__(self, url: str, seconds: float) -> None:
        self.url = url
        self.seconds = seconds
        self.loop = GLib.MainLoop()
        self.pipe = Gst.parse_launch(PIPELINE)
        self.wb = self.pipe.get_by_name("wb")
        self.result: dict[str, object] = {"sent_rtp": 0, "echo_rtp": 0, "echo_decoded": 0,
                                          "ice_states": [], "connection_states": []}
        pay_src = self.pipe.get_by_name("pay").get_static_pad("src")
        pay_src.add_probe(Gst.PadProbeType.BUFFER, self._count, "sent_rtp")
        self.wb.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.wb.connect("pad-added", self._on_pad_added)
        self.wb.connect("notify::ice-connection-state", self._on_state, "ice-connection-state",
                        "ice_states")
        self.wb.connect("notify::connection-state", self._on_state, "connection-state",
                        "connection_states")
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)

    def run(self) -> dict[str, object]:
        self.pipe.set_state(Gst.State.PLAYING)
        GLib.timeout_add(int(self.seconds * 1000), self._stop)
        GLib.timeout_add(int((self.seconds + 20) * 1000), self._stop)  # no answer: give up
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        if "location" in self.result:  # RFC 9725 §4.3: the caller ends the session
            resource = urllib.parse.urljoin(self.url, str(self.result["location"]))
            request = urllib.request.Request(resource, method="DELETE")
            with urllib.request.urlopen(request, timeout=10) as response:
                self.result["delete_status"] = response.status
        return self.result

    def _stop(self) -> bool:
        self.loop.quit()
        return False

    def _count(self, _pad: Gst.Pad, _info: Gst.PadProbeInfo, key: str) -> Gst.PadProbeReturn:
        self.result[key] = int(self.result[key]) + 1  # type: ignore[call-overload]
        return Gst.PadProbeReturn.OK

    def _on_state(self, wb: Gst.Element, _spec: object, prop: str, key: str) -> None:
        states = self.result[key]
        assert isinstance(states, list)
        states.append(wb.get_property(prop).value_nick)

    def _on_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        err, debug = message.parse_error()
        self.result["error"] = f"{err.message} ({debug})"
        self.loop.quit()

    def _on_negotiation_needed(self, wb: Gst.Element) -> None:
        if "offer_setup" in self.result:
            return  # one offer per WHIP session: no renegotiation (RFC 9725 §4.3)
        self.result["offer_setup"] = []
        promise = Gst.Promise.new_with_change_func(self._on_offer, None)
        wb.emit("create-offer", None, promise)

    def _on_offer(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()
        if reply is None or not reply.has_field("offer"):
            self.result["error"] = f"no offer: {reply.to_string() if reply else None}"
            self.loop.quit()
            return
        offer = reply.get_value("offer")
        self.wb.emit("set-local-description", offer, None)
        sdp = offer.sdp.as_text()
        self.result["offer_setup"] = [ln for ln in sdp.splitlines() if ln.startswith("a=setup")]
        request = urllib.request.Request(
            self.url, data=sdp.encode(), method="POST",
            headers={"Content-Type": "application/sdp"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            self.result["status"] = response.status
            self.result["location"] = response.headers["Location"]
            answer = response.read().decode()
        _, message = GstSdp.SDPMessage.new()
        GstSdp.sdp_message_parse_buffer(answer.encode(), message)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER,
                                                             message)
        self.wb.emit("set-remote-description", description, None)

    def _on_pad_added(self, _wb: Gst.Element, pad: Gst.Pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        pad.add_probe(Gst.PadProbeType.BUFFER, self._count, "echo_rtp")
        decode = Gst.parse_bin_from_description(
            "rtpopusdepay ! opusdec ! fakesink name=out sync=false", True)
        self.pipe.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))
        sink_pad = decode.get_by_name("out").get_static_pad("sink")
        sink_pad.add_probe(Gst.PadProbeType.BUFFER, self._count, "echo_decoded")


def main() -> None:
    Gst.init(None)
    url, seconds = sys.argv[1], float(sys.argv[2])
    result = Caller(url, seconds).run()
    result["gstreamer"] = Gst.version_string()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
