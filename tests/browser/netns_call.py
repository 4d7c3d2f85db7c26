"""One Chromium call, run inside a network namespace by ``test_ice_tcp.py``.

``python -m tests.browser.netns_call SECONDS``: prints ``{"offer": sdp}`` as a line, reads
``{"answer": sdp}`` from stdin, then after ``SECONDS`` of connected audio prints the call's
stats: connection state, inbound audio packets, and the selected pair's local and remote
candidate protocols (getStats). A WebAudio tone stands in for the microphone.
"""

from __future__ import annotations

import json
import sys

from playwright.sync_api import sync_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

OFFER_JS = """async () => {
  const ctx = new AudioContext();
  const osc = ctx.createOscillator();
  const dest = ctx.createMediaStreamDestination();
  osc.frequency.value = 440; osc.connect(dest); osc.start();
  const pc = new RTCPeerConnection({iceServers: []});
  window.pc = pc;
  pc.addTrack(dest.stream.getAudioTracks()[0], dest.stream);
  await pc.setLocalDescription(await pc.createOffer());
  return pc.localDescription.sdp;
}"""

ANSWER_JS = """async ([answer, seconds]) => {
  const pc = window.pc;
  await pc.setRemoteDescription({type: "answer", sdp: answer});
  const t0 = performance.now();
  while (pc.connectionState !== "connected") {
    if (pc.connectionState === "failed" || performance.now() - t0 > 20000) {
      return {state: pc.connectionState};
    }
    await new Promise(r => setTimeout(r, 50));
  }
  const connectedMs = performance.now() - t0;
  const count = async () => {
    let packets = 0;
    (await pc.getStats()).forEach(s => {
      if (s.type === "inbound-rtp" && s.kind === "audio") packets = s.packetsReceived;
    });
    return packets;
  };
  const start = await count();
  const series = [];
  const t1 = performance.now();
  while (performance.now() - t1 < seconds * 1000) {
    await new Promise(r => setTimeout(r, 100));
    series.push([Math.round(performance.now() - t1), await count(), pc.connectionState]);
  }
  const stats = await pc.getStats();
  let pair = null, local = null, remote = null, packets = 0;
  stats.forEach(s => {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      pair = stats.get(s.selectedCandidatePairId);
    }
    if (s.type === "inbound-rtp" && s.kind === "audio") packets = s.packetsReceived;
  });
  if (pair) {
    local = stats.get(pair.localCandidateId);
    remote = stats.get(pair.remoteCandidateId);
  }
  return {
    state: pc.connectionState, connectedMs, packets: packets - start, series,
    local: local && {protocol: local.protocol, type: local.candidateType,
                     tcpType: local.tcpType || null},
    remote: remote && {protocol: remote.protocol, address: remote.address, port: remote.port},
  };
}"""


def main() -> None:
    seconds = float(sys.argv[1])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page()
            offer = page.evaluate(OFFER_JS)
            sys.stdout.write(json.dumps({"offer": offer}) + "\n")
            sys.stdout.flush()
            answer = json.loads(sys.stdin.readline())["answer"]
            result = page.evaluate(ANSWER_JS, [answer, seconds])
            sys.stdout.write(json.dumps({"result": result}) + "\n")
            sys.stdout.flush()
        finally:
            browser.close()


if __name__ == "__main__":
    main()
