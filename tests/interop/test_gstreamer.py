"""GStreamer's webrtcbin (libnice ICE, its own DTLS agent with an RSA certificate) as a WHIP
caller: a tone out through the relay, the echo agent's tone back. Runs ``gst_whip.py`` under
Debian's python3, which has ``gi`` (the project's venv does not)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urljoin

import pytest

from tests.interop.conftest import host_ipv4
from whip.client import get_json
from whip.launch import Edge

pytestmark = [pytest.mark.interop, pytest.mark.e2e]

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).with_name("gst_whip.py")
SECONDS = 4.0


def _missing() -> str | None:
    """Why GStreamer's WebRTC cannot run here, or None."""
    if shutil.which("gst-inspect-1.0") is None:
        return "gst-inspect-1.0 missing (Debian: gstreamer1.0-tools)"
    for element, package in (("webrtcbin", "gstreamer1.0-plugins-bad"),
                             ("nicesrc", "gstreamer1.0-nice"),
                             ("opusenc", "gstreamer1.0-plugins-base"),
                             ("rtpopuspay", "gstreamer1.0-plugins-good")):
        if subprocess.run(["gst-inspect-1.0", element], capture_output=True).returncode != 0:
            return f"GStreamer element {element} missing (Debian: {package})"
    check = "import gi; gi.require_version('GstWebRTC', '1.0'); gi.require_version('GstSdp', '1.0')"
    if subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True).returncode != 0:
        return "Debian python3 lacks gi or GstWebRTC (python3-gi gir1.2-gst-plugins-bad-1.0)"
    if host_ipv4() is None:
        return "no non-loopback IPv4: libnice never sends from or to loopback"
    return None


@pytest.fixture(scope="module")
def gstreamer() -> None:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)


def test_webrtcbin_publishes_a_tone_and_hears_the_echo(gstreamer: None,
                                                       interop_edge: Edge) -> None:
    url = urljoin(interop_edge.base_url, "/v1/sessions")
    caller = subprocess.Popen([SYSTEM_PYTHON, str(SCRIPT), url, str(SECONDS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = caller.communicate(timeout=SECONDS + 40)
    finally:
        if caller.poll() is None:
            caller.kill()
    assert caller.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert "error" not in result, result
    assert result["status"] == 201
    assert "connected" in result["connection_states"], result
    assert result["sent_rtp"] > 100, result
    # the echo agent sent the tone back: RTP on the receive pad, decoded by opusdec
    assert result["echo_rtp"] > 100 and result["echo_decoded"] > 100, result
    assert result["delete_status"] == 200, result  # RFC 9725 §4.3: the caller hangs up
    state = get_json(urljoin(interop_edge.base_url, result["location"]))
    assert state["connected_at"] is not None and state["state"] == "ended", state

