// Fleet dashboard: renders a snapshot (first from the page, then every second from /ws/dashboard).
"use strict";

(() => {
  // Very rough continent outlines (lon, lat): orientation only, drawn equirectangular.
  const LAND = [
    [[-168,66],[-140,70],[-110,73],[-80,73],[-62,60],[-55,50],[-66,44],[-76,35],[-81,25],[-90,29],[-97,26],[-97,20],[-88,15],[-83,9],[-78,8],[-92,14],[-105,20],[-115,30],[-124,40],[-124,48],[-135,57],[-150,60],[-165,60]],
    [[-78,8],[-60,10],[-50,0],[-35,-6],[-40,-22],[-48,-28],[-58,-38],[-65,-45],[-68,-55],[-75,-50],[-72,-30],[-70,-18],[-80,-5]],
    [[-10,36],[-9,43],[-2,44],[-5,48],[3,51],[8,54],[10,58],[5,62],[15,69],[28,71],[40,67],[60,69],[80,73],[100,77],[120,73],[140,72],[170,70],[180,66],[170,60],[160,58],[142,52],[140,45],[130,42],[126,37],[121,31],[120,23],[110,20],[106,10],[100,13],[100,3],[104,1],[98,8],[92,20],[88,22],[80,15],[77,8],[72,20],[67,25],[57,25],[56,27],[50,30],[48,30],[44,13],[43,12],[35,28],[32,31],[28,37],[26,40],[20,40],[18,40],[12,44],[8,44],[3,43],[-5,36]],
    [[-17,21],[-10,30],[-6,36],[10,37],[20,32],[32,31],[35,28],[43,12],[51,11],[40,-3],[40,-15],[35,-25],[26,-34],[19,-35],[12,-18],[14,-8],[9,-1],[8,5],[-8,4],[-17,14]],
    [[114,-22],[114,-34],[125,-33],[135,-35],[140,-38],[150,-37],[153,-28],[146,-19],[142,-11],[136,-12],[131,-12],[123,-16]],
    [[-5,50],[1,51],[0,53],[-3,56],[-5,58],[-6,55],[-3,54]],
    [[130,31],[135,34],[140,35],[142,40],[141,45],[139,40],[133,35]],
    [[-73,78],[-45,60],[-20,70],[-20,82],[-60,83]],
  ];
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const x = (lon) => (lon + 180) * 2;
  const y = (lat) => (80 - lat) * 2;  // the map shows latitudes 80 N .. 85 S
  const csrf = document.querySelector("#csrf input[name=csrfmiddlewaretoken]").value;
  let lastAt = 0;
  let lastHealth = null; // code -> health, to announce changes (not every repaint) to screen readers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v; else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) node.append(child instanceof Node ? child : String(child ?? ""));
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  function drawBaseMap(map) {
    for (let lon = -150; lon <= 150; lon += 30) map.append(svg("line", { class: "grid-line", x1: x(lon), y1: 0, x2: x(lon), y2: 330 }));
    for (let lat = -60; lat <= 60; lat += 30) map.append(svg("line", { class: "grid-line", x1: 0, y1: y(lat), x2: 720, y2: y(lat) }));
    for (const shape of LAND) {
      map.append(svg("polygon", { class: "land", points: shape.map(([lo, la]) => `${x(lo)},${y(la)}`).join(" ") }));
    }
    const dots = svg("g", { id: "map-dots" });
    map.append(dots);
  }

  function drawDots(regions) {
    const dots = $("map-dots");
    dots.replaceChildren();
    for (const r of regions) {
      const g = svg("g", {});
      const title = svg("title", {});
      title.textContent = `${r.name} (${r.code}): ${r.health}, ${r.sessions} sessions`;
      const ring = svg("circle", { cx: x(r.longitude), cy: y(r.latitude), r: 13, class: `health-${r.health}`, opacity: 0.25 });
      const dot = svg("circle", { cx: x(r.longitude), cy: y(r.latitude), r: 6.5, class: `region health-${r.health}` });
      const label = svg("text", { x: x(r.longitude) + 11, y: y(r.latitude) - 9 });
      label.textContent = `${r.code} · ${r.health}`;
      g.append(title, ring, dot, label);
      dots.append(g);
    }
  }

  function postForm(action, fields, label, cls) {
    const form = el("form", { method: "post", action, class: "inline" },
      el("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrf }));
    for (const [k, v] of Object.entries(fields)) form.append(el("input", { type: "hidden", name: k, value: v }));
    form.append(el("button", { type: "submit", class: `small ${cls}` }, label));
    return form;
  }

  const badge = (health) => el("span", { class: `badge health-${health}` }, health);
  const nodeHealth = (n) => (n.up ? (n.draining ? "draining" : "up") : "down");
  const fmt = (v, unit = "") => (v === null || v === undefined ? "—" : `${v}${unit}`);

  function drainForm(kind, node) {
    const draining = node.state === "draining";
    return postForm(`/dashboard/nodes/${kind}/${node.id}/drain`, { drain: draining ? "0" : "1" },
      draining ? "Resume" : "Drain", draining ? "secondary" : "danger");
  }

  function relayTable(relays) {
    const drops = (d) => Object.entries(d).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
    return el("table", { class: "nodes" },
      el("caption", { class: "sr-only" }, "Relays"),
      el("thead", {}, el("tr", {}, ["Relay", "Health", "State", "Flows", "TCP", "Sess.", "Pkts/s", "Drops", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, relays.map((r) => el("tr", {},
        el("td", {}, `#${r.id}`, el("br"), el("span", { class: "mono" }, r.public)),
        el("td", {}, badge(nodeHealth(r)), r.workers > 1 ? ` ×${r.workers}` : ""),
        el("td", {}, r.state),
        el("td", { class: "num" }, r.flows),
        el("td", { class: "num", "data-tcp": r.tcp || "off",
                   title: r.tcp ? `ICE-TCP ${r.tcp}; closed: ${drops(r.tcp_closed)}` : "no ICE-TCP listener" },
          r.tcp ? r.tcp_connections : "—"),
        el("td", { class: "num" }, r.sessions),
        el("td", { class: "num" }, fmt(r.pps)),
        el("td", { class: Object.keys(r.drops).length ? "drops" : "" }, drops(r.drops)),
        el("td", {}, drainForm("relay", r)),
      ))));
  }

  function transceiverTable(items) {
    return el("table", { class: "nodes" },
      el("thead", {}, el("tr", {}, ["Transceiver", "Health", "State", "Sessions", "Load", "Loop lag", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, items.map((t) => el("tr", {},
        el("td", {}, `#${t.id}`, el("br"), el("span", { class: "mono" }, t.bind)),
        el("td", {}, badge(nodeHealth(t))),
        el("td", {}, t.state),
        el("td", { class: "num" }, `${t.sessions} (${t.connected} conn.)`),
        el("td", { class: "num" }, `${Math.round(t.load * 100)} % of ${t.capacity}`),
        el("td", { class: "num" }, fmt(t.loop_lag_ms, " ms")),
        el("td", {}, drainForm("transceiver", t)),
      ))));
  }

  function regionCard(r) {
    const toggle = postForm(`/dashboard/regions/${encodeURIComponent(r.code)}/enabled`, { enabled: r.enabled ? "0" : "1" },
      r.enabled ? "Disable region" : "Enable region", r.enabled ? "danger" : "primary");
    const pps = r.relays.reduce((s, n) => s + (n.pps || 0), 0);
    return el("section", { class: "card region", "data-region": r.code, "data-health": r.health, "aria-label": `Region ${r.code}` },
      el("div", { class: "region-head" },
        el("h3", {}, `${r.name} `, el("span", { class: "mono" }, r.code), r.is_default ? " (default)" : ""),
        badge(r.health)),
      el("p", { class: "region-meta" },
        `${r.latitude.toFixed(1)}°, ${r.longitude.toFixed(1)}° · ${r.sessions} live session(s) · ${pps.toFixed(1)} pkts/s `, toggle),
      el("div", { class: "table-wrap" }, r.relays.length ? relayTable(r.relays) : el("p", { class: "hint" }, "No relay shard.")),
      el("div", { class: "table-wrap" }, r.transceivers.length ? transceiverTable(r.transceivers) : el("p", { class: "hint" }, "No transceiver.")));
  }

  function summary(s) {
    const count = (h) => s.regions.filter((r) => r.health === h).length;
    const tile = (label, value, id) => el("div", { class: "card" }, el("h2", {}, label), el("p", { class: "big", id }, value));
    const pps = s.regions.flatMap((r) => r.relays).reduce((a, n) => a + (n.pps || 0), 0);
    return [
      tile("Regions up", `${count("up")} / ${s.regions.length}`, "sum-regions"),
      tile("Live sessions", s.regions.reduce((a, r) => a + r.sessions, 0), "sum-sessions"),
      tile("Relay packets/s", pps.toFixed(0), "sum-pps"),
      tile("Down or degraded", count("down") + count("degraded"), "sum-down"),
    ];
  }

  function sessionsTable(rows) {
    return [
      el("thead", {}, el("tr", {}, ["Session", "State", "Region", "Why", "Relay", "Transceiver", "Created"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.length ? rows.map((s) => el("tr", {},
        el("td", { class: "mono" }, s.id.slice(0, 8)), el("td", {}, s.state), el("td", {}, s.region),
        el("td", {}, s.region_reason), el("td", { class: "num" }, s.relay), el("td", { class: "num" }, s.transceiver),
        el("td", {}, new Date(s.created_at).toLocaleTimeString()))) : el("tr", {}, el("td", { colspan: 7 }, "No sessions yet."))),
    ];
  }

  function announceChanges(regions) {
    const now = Object.fromEntries(regions.map((r) => [r.code, r.health]));
    if (lastHealth) {
      const changed = regions.filter((r) => lastHealth[r.code] !== r.health);
      if (changed.length) $("announce").textContent = changed.map((r) => `Region ${r.code} is ${r.health}.`).join(" ");
    }
    lastHealth = now;
  }

  function render(snapshot) {
    lastAt = Date.now();
    announceChanges(snapshot.regions);
    // Keep keyboard focus across re-renders: remember the focused form's action.
    const focused = document.activeElement && document.activeElement.closest("form");
    const focusKey = focused ? focused.getAttribute("action") : null;
    $("summary").replaceChildren(...summary(snapshot));
    $("regions").replaceChildren(...snapshot.regions.map(regionCard));
    $("sessions").replaceChildren(...sessionsTable(snapshot.sessions || []));
    drawDots(snapshot.regions);
    if (focusKey) {
      const again = document.querySelector(`form[action="${CSS.escape(focusKey)}"] button`);
      if (again) again.focus();
    }
  }

  function connect(delay) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws/dashboard`);
    ws.onmessage = (msg) => {
      const data = JSON.parse(msg.data);
      if (data.type === "fleet.snapshot") { render(data); delay = 1000; }
      else if (data.type === "fleet.error") $("live").textContent = `Live updates paused: ${data.detail}.`;
    };
    ws.onclose = (e) => {
      $("live").textContent = e.code === 4403 ? "Live updates need a staff login." : "Live updates lost: reconnecting…";
      if (e.code !== 4403) setTimeout(() => connect(Math.min(delay * 2, 10000)), delay);
    };
  }

  drawBaseMap($("map"));
  render(JSON.parse($("initial-snapshot").textContent));
  connect(1000);
  setInterval(() => {
    if (lastAt && Date.now() - lastAt < 5000) $("live").textContent = `Live · updated ${((Date.now() - lastAt) / 1000).toFixed(0)} s ago`;
  }, 500);
})();
