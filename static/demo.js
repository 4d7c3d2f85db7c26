// Demo call: one WHIP POST (non-trickle), live getStats, a mouth-to-ear probe, session events.
"use strict";

(() => {
  const PROBE_HZ = 2400;        // a pure tone: speech and the fake mic beep (400 Hz) are broadband there
  const PROBE_MS = 40;          // chirp length
  const PROBE_GAIN = 0.4;
  const PROBE_EVERY_MS = 2000;
  const PROBE_TIMEOUT_MS = 1500; // a chirp not heard back by then is counted as lost
  const GATHER_TIMEOUT_MS = 5000;
  const SUBSCRIBE_WAIT_MS = 500;

  const $ = (id) => document.getElementById(id);
  const ui = {
    start: $("start"), stop: $("stop"), region: $("region"), status: $("status-text"),
    dot: document.querySelector("#status .dot"), error: $("error"), audio: $("remote"),
    events: $("events"),
  };
  let call = null; // everything one call owns, so stop() can release all of it

  function setText(id, text) { $(id).textContent = text; }

  function setStatus(state, text) {
    ui.dot.dataset.state = state;
    ui.status.textContent = text;
  }

  function showError(text) {
    ui.error.textContent = text;
    ui.error.hidden = !text;
  }

  function logEvent(state, detail, at) {
    const item = document.createElement("li");
    const time = new Date((at || Date.now() / 1000) * 1000).toLocaleTimeString();
    item.innerHTML = "<time></time> <strong></strong> <span></span>";
    item.children[0].textContent = time;
    item.children[1].textContent = state;
    item.children[2].textContent = detail || "";
    ui.events.prepend(item);
    while (ui.events.children.length > 30) ui.events.lastChild.remove();
  }

  function micError(err) {
    switch (err && err.name) {
      case "NotAllowedError": case "SecurityError":
        return "Microphone access was blocked. Allow the microphone for this site and try again.";
      case "NotFoundError": case "OverconstrainedError":
        return "No microphone was found. Plug one in (or enable it) and try again.";
      case "NotReadableError":
        return "The microphone is busy in another application. Close it and try again.";
      default:
        return "Could not open the microphone" + (err && err.message ? ": " + err.message : ".");
    }
  }

  async function problemText(response) {
    let body = {};
    try { body = await response.json(); } catch (_) { /* not problem+json */ }
    const retry = response.headers.get("Retry-After");
    if (response.status === 503) {
      return "No capacity right now: every nearby voice server is busy or down." +
        (retry ? ` Please retry in ${retry} s.` : " Please retry shortly.");
    }
    if (response.status === 429) {
      return "Too many calls from this address." + (retry ? ` Please wait ${retry} s.` : "");
    }
    if (response.status === 401) {
      return "This server only takes calls with an API key, and its open demo is off.";
    }
    if (response.status === 403) return "Not allowed: " + (body.detail || "forbidden") + ".";
    if (response.status === 400 && body.code === "unknown_region") {
      return "That region is not available. Choose another one or “Nearest to me”.";
    }
    if (response.status === 400) return "The browser's call offer was refused: " + (body.detail || "bad offer") + ".";
    return `The server answered ${response.status}` + (body.detail ? `: ${body.detail}.` : ".");
  }

  // The open demo's client secret: the page names where to get one (this site's
  // /demo/client_secret) only when the API needs a token and the operator opened the demo.
  async function demoSecret() {
    const url = document.getElementById("call-form").dataset.clientSecretUrl;
    if (!url) return null;
    let response;
    try {
      response = await fetch(url, { method: "POST" });
    } catch (_) {
      throw new Error("Could not reach the server. Check your network connection and try again.");
    }
    if (response.status === 200) return (await response.json()).value;
    throw new Error(await problemText(response));
  }

  function authHeaders(token) {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function waitForGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); pc.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      const timer = setTimeout(done, GATHER_TIMEOUT_MS); // send what we have; the relay needs none
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  // Outgoing audio = microphone + a probe oscillator gated to short chirps; incoming audio goes
  // through a band-pass at the probe frequency so a chirp's echo can be timed.
  function buildAudio(mic) {
    const ctx = new AudioContext({ latencyHint: "interactive" });
    const out = ctx.createMediaStreamDestination();
    const micSource = ctx.createMediaStreamSource(mic);
    const outAnalyser = ctx.createAnalyser();
    outAnalyser.fftSize = 512;
    micSource.connect(out);
    micSource.connect(outAnalyser);
    const osc = ctx.createOscillator();
    osc.frequency.value = PROBE_HZ;
    const gate = ctx.createGain();
    gate.gain.value = 0;
    osc.connect(gate).connect(out);
    gate.connect(outAnalyser);
    osc.start();
    return { ctx, out, osc, gate, outAnalyser, inAnalyser: null, probeAnalyser: null };
  }

  function attachRemote(audio, stream) {
    const { ctx } = audio;
    const source = ctx.createMediaStreamSource(stream);
    audio.inAnalyser = ctx.createAnalyser();
    audio.inAnalyser.fftSize = 512;
    const band = ctx.createBiquadFilter();
    band.type = "bandpass";
    band.frequency.value = PROBE_HZ;
    band.Q.value = 30;
    audio.probeAnalyser = ctx.createAnalyser();
    audio.probeAnalyser.fftSize = 256; // 5 ms at 48 kHz: the timing resolution
    source.connect(audio.inAnalyser);
    source.connect(band).connect(audio.probeAnalyser);
  }

  function rms(analyser, buffer) {
    analyser.getFloatTimeDomainData(buffer);
    let sum = 0;
    for (let i = 0; i < buffer.length; i++) sum += buffer[i] * buffer[i];
    return Math.sqrt(sum / buffer.length);
  }

  function startProbe(c) {
    const a = c.audio;
    const band = new Float32Array(256), full = new Float32Array(512);
    const probe = { sentAt: null, results: [], lost: 0 };
    c.probe = probe;
    c.timers.push(setInterval(() => {
      if (!a.probeAnalyser || probe.sentAt !== null) return;
      const at = a.ctx.currentTime + 0.05;
      a.gate.gain.setValueAtTime(PROBE_GAIN, at);
      a.gate.gain.setValueAtTime(0, at + PROBE_MS / 1000);
      probe.sentAt = at;
    }, PROBE_EVERY_MS));
    c.timers.push(setInterval(() => {
      if (!a.probeAnalyser || probe.sentAt === null) return;
      const now = a.ctx.currentTime;
      if (now < probe.sentAt) return;
      // The chirp's echo: loud in the probe band AND most of what arrives (the fake microphone's
      // beep and speech are broadband, so they fail the second test).
      const inBand = rms(a.probeAnalyser, band);
      const total = rms(a.inAnalyser, full);
      if (inBand > 0.05 && inBand > 0.6 * total) {
        probe.results.push((now - probe.sentAt) * 1000);
        probe.sentAt = null;
        showProbe(probe);
      } else if ((now - probe.sentAt) * 1000 > PROBE_TIMEOUT_MS) {
        probe.lost += 1;
        probe.sentAt = null;
        showProbe(probe);
      }
    }, 4));
  }

  function showProbe(probe) {
    const r = probe.results.slice(-15);
    if (!r.length) {
      setText("m2e", "not heard back");
      setText("m2e-detail", `${probe.lost} chirp(s) sent, none came back yet.`);
      return;
    }
    const sorted = [...r].sort((x, y) => x - y);
    const median = sorted[Math.floor(sorted.length / 2)];
    const out = $("m2e");
    out.dataset.last = String(Math.round(r[r.length - 1]));
    out.dataset.median = String(Math.round(median));
    out.dataset.count = String(probe.results.length);
    out.dataset.all = probe.results.map(Math.round).join(",");
    setText("m2e", `${Math.round(r[r.length - 1])} ms`);
    setText("m2e-detail",
      `Median ${Math.round(median)} ms over the last ${r.length} chirps` +
      (probe.lost ? `, ${probe.lost} not heard back` : "") + ". Measured via the echo agent, ±10 ms.");
  }

  function fmtBytes(n) {
    return n > 1e6 ? (n / 1e6).toFixed(2) + " MB" : n > 1e3 ? (n / 1e3).toFixed(1) + " kB" : n + " B";
  }

  async function pollStats(c) {
    const report = await c.pc.getStats();
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    let pair = null, inbound = null, outbound = null, source = null, remoteIn = null;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
      else if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s;
      else if (s.type === "outbound-rtp" && s.kind === "audio") outbound = s;
      else if (s.type === "media-source" && s.kind === "audio") source = s;
      else if (s.type === "remote-inbound-rtp" && s.kind === "audio") remoteIn = s;
    });
    if (!pair) report.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
    const rtt = pair && pair.currentRoundTripTime !== undefined ? pair.currentRoundTripTime
      : remoteIn && remoteIn.roundTripTime !== undefined ? remoteIn.roundTripTime : null;
    setText("rtt", rtt === null ? "—" : `${(rtt * 1000).toFixed(1)} ms`);
    if (pair) {
      const remote = byId.get(pair.remoteCandidateId);
      if (remote) setText("path", `${remote.address || remote.ip}:${remote.port} ${remote.protocol}`);
    }
    if (inbound) {
      setText("jitter", inbound.jitter === undefined ? "—" : `${(inbound.jitter * 1000).toFixed(1)} ms`);
      const lost = Math.max(0, inbound.packetsLost || 0);
      const total = lost + (inbound.packetsReceived || 0);
      setText("loss", total ? `${((100 * lost) / total).toFixed(2)} % (${lost} of ${total})` : "—");
      const delta = c.lastReceived === null ? null : inbound.packetsReceived - c.lastReceived;
      c.lastReceived = inbound.packetsReceived;
      setText("received", `${inbound.packetsReceived} pkts · ${fmtBytes(inbound.bytesReceived || 0)}`);
      if (delta !== null) setText("receive-rate", `${delta} pkts/s`);
      // Headless Chromium reports 0 here even when audio arrives: the packet counts are the proof.
      setText("energy", `in ${(inbound.audioLevel || 0).toFixed(3)}` +
        (source && source.audioLevel !== undefined ? ` · out ${source.audioLevel.toFixed(3)}` : ""));
      $("received").dataset.packets = String(inbound.packetsReceived || 0);
      $("received").dataset.bytes = String(inbound.bytesReceived || 0);
    }
    if (outbound) {
      setText("sent", `${outbound.packetsSent} pkts · ${fmtBytes(outbound.bytesSent || 0)}`);
    }
  }

  // Meters hold a decaying peak so short sounds (a word, a chirp) stay visible for a moment.
  function pollLevels(c) {
    const buf = new Float32Array(512);
    const peak = { out: 0, in: 0 };
    const show = (key, analyser) => {
      peak[key] = Math.max(Math.min(1, rms(analyser, buf) * 3), peak[key] * 0.9);
      $(`level-${key}`).value = peak[key];
      setText(`level-${key}-text`, peak[key].toFixed(2));
    };
    c.timers.push(setInterval(() => {
      show("out", c.audio.outAnalyser);
      if (c.audio.inAnalyser) show("in", c.audio.inAnalyser);
    }, 50));
  }

  // Resolves once the server has sent the session's current state (so it has joined the event
  // group), or after SUBSCRIBE_WAIT_MS: the call never waits on the event stream for long.
  function subscribe(c, sessionId) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws/sessions/${sessionId}`);
    c.ws = ws;
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, SUBSCRIBE_WAIT_MS);
      ws.onmessage = (msg) => {
        clearTimeout(timer);
        resolve();
        const event = JSON.parse(msg.data);
        const detail = event.detail || (event.type === "session.state" ? "current state" : "");
        logEvent(event.state, detail, event.at);
        if ((event.state === "failed" || event.state === "closed") && call === c) {
          const failed = event.state === "failed";
          if (failed) showError("The call ended on the server: " + (event.detail || "failed") + ".");
          stop(failed);
        }
      };
      ws.onclose = (e) => {
        clearTimeout(timer);
        resolve();
        if (e.code === 4404) logEvent("gone", "the server no longer knows this session");
      };
    });
  }

  function onConnectionState(c) {
    const state = c.pc.connectionState;
    setText("conn-state", state);
    $("conn-state").dataset.state = state;
    if (state === "connected") setStatus("connected", "Connected: talk, the agent echoes you.");
    else if (state === "connecting") setStatus("connecting", "Connecting to the relay…");
    else if (state === "disconnected") setStatus("warn", "Connection interrupted: trying to recover…");
    else if (state === "failed") {
      showError("The call could not connect: no UDP path to the relay (ICE failed). " +
        "A firewall or VPN may block UDP; try another network.");
      stop(true);
    }
  }

  async function start() {
    if (call) return;
    showError("");
    ui.start.disabled = true;
    ui.events.replaceChildren();
    setStatus("connecting", "Asking for the microphone…");
    const c = { pc: null, audio: null, mic: null, ws: null, location: null, token: null, timers: [], lastReceived: null };
    call = c;
    try {
      try {
        c.mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      } catch (err) {
        throw new Error(micError(err));
      }
      c.audio = buildAudio(c.mic);
      c.pc = new RTCPeerConnection({ iceServers: [] });
      c.pc.addTrack(c.audio.out.stream.getAudioTracks()[0], c.audio.out.stream);
      c.pc.ontrack = (e) => {
        const stream = e.streams[0] || new MediaStream([e.track]);
        ui.audio.srcObject = stream; // Chromium only feeds Web Audio from a played remote stream
        attachRemote(c.audio, stream);
      };
      c.pc.onconnectionstatechange = () => onConnectionState(c);
      c.pc.oniceconnectionstatechange = () => setText("ice-state", c.pc.iceConnectionState);
      await c.pc.setLocalDescription(await c.pc.createOffer());
      setStatus("connecting", "Preparing the call…");
      await waitForGathering(c.pc);
      setStatus("connecting", "Sending the offer…");
      const region = ui.region.value;
      c.token = await demoSecret();
      let response;
      try {
        response = await fetch("/v1/sessions" + (region ? `?region=${encodeURIComponent(region)}` : ""), {
          method: "POST", headers: { "Content-Type": "application/sdp", ...authHeaders(c.token) },
          body: c.pc.localDescription.sdp,
        });
      } catch (_) {
        throw new Error("Could not reach the server. Check your network connection and try again.");
      }
      if (response.status !== 201) throw new Error(await problemText(response));
      c.location = response.headers.get("Location");
      const h = (name) => response.headers.get(name) || "—";
      setText("route-region", h("X-Region"));
      setText("route-reason", describeReason(h("X-Region-Reason")));
      setText("route-relay", h("X-Relay-Shard"));
      setText("route-transceiver", h("X-Transceiver"));
      const sessionId = c.location.split("/").pop();
      setText("route-session", sessionId);
      const answer = await response.text();
      await subscribe(c, sessionId); // before ICE can start, so no session event is missed
      if (call !== c) return;
      await c.pc.setRemoteDescription({ type: "answer", sdp: answer });
      if (call !== c) return;
      ui.stop.disabled = false;
      ui.stop.focus();
      pollLevels(c);
      startProbe(c);
      c.timers.push(setInterval(() => pollStats(c).catch(() => {}), 1000));
    } catch (err) {
      if (call !== c) return; // stopped meanwhile: the failure is ours, not the user's
      showError(err.message || String(err));
      await stop(true);
    }
  }

  function describeReason(reason) {
    if (reason === "nearest") return "nearest healthy region to you";
    if (reason === "pinned") return "you chose it";
    if (reason === "default") return "default region (your location is unknown)";
    if (reason.startsWith("fallback:")) return `fallback: ${reason.slice(9)}`;
    return reason;
  }

  async function stop(keepError) {
    const c = call;
    if (!c) return;
    call = null;
    c.timers.forEach(clearInterval);
    if (c.ws) c.ws.close();
    if (c.pc) c.pc.close();
    if (c.mic) c.mic.getTracks().forEach((t) => t.stop());
    if (c.audio) c.audio.ctx.close().catch(() => {});
    ui.audio.srcObject = null;
    ui.stop.disabled = true;
    ui.start.disabled = false;
    setText("conn-state", "closed");
    setStatus("idle", keepError ? "Call ended." : "Call ended. Press “Start talking” to call again.");
    if (c.location) {
      try {
        await fetch(c.location, { method: "DELETE", keepalive: true, headers: authHeaders(c.token) });
      } catch (_) { /* the server ends it on its own after the consent timeout */ }
    }
    if (!keepError) showError("");
    ui.start.focus();
  }

  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", () => stop(false));
  window.addEventListener("pagehide", () => {
    if (call && call.location) {
      fetch(call.location, { method: "DELETE", keepalive: true, headers: authHeaders(call.token) }).catch(() => {});
    }
  });
})();
