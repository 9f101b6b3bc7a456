// The dashboard at `/`: reads the serving layer's own JSON endpoints and draws them. No
// libraries: the chart is SVG built here. Every choice lives in the query string
// (metric, range or from/to, group_by, step, window, refresh), so a URL reproduces a view.
//
// Marks for tests and tools: each drawn point carries `data-source` (batch, speed or mixed, as
// the API answered), the cutover line `data-role="cutover"`, each panel `data-state` (loading,
// ready or error), and `<body data-state="ready">` once every panel has settled.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const UNITS = [["d", 86400000], ["h", 3600000], ["m", 60000], ["s", 1000], ["ms", 1]];
  // Without an explicit step, the step is the smallest multiple of the bucket that keeps a
  // series under this many points.
  const AUTO_POINTS = 720;
  const PALETTE = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#4b5563"];
  const TICKS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080].map((m) => m * 60000);

  const $ = (id) => document.getElementById(id);

  function parseDuration(text) {
    const m = /^(\d+)(ms|s|m|h|d)$/.exec(text || "");
    if (!m) return null;
    const unit = UNITS.find(([name]) => name === m[2]);
    const ms = Number(m[1]) * unit[1];
    return ms > 0 ? ms : null;
  }

  function formatDuration(ms) {
    const [name, size] = UNITS.find(([, size]) => ms % size === 0);
    return `${ms / size}${name}`;
  }

  function formatTime(ms, withDate) {
    const iso = new Date(ms).toISOString();
    return withDate ? `${iso.slice(0, 10)} ${iso.slice(11, 19)}` : iso.slice(11, 16);
  }

  function formatInstant(text) {
    if (text == null) return "—";
    const ms = Date.parse(text);
    return Number.isNaN(ms) ? String(text) : `${formatTime(ms, true)} UTC`;
  }

  function formatNumber(value) {
    if (value == null) return "—";
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    return value.toLocaleString("en-US", { maximumSignificantDigits: 5 });
  }

  function formatSeconds(seconds) {
    if (seconds == null) return "—";
    const abs = Math.abs(seconds);
    if (abs < 120) return `${formatNumber(Math.round(seconds * 10) / 10)} s`;
    if (abs < 7200) return `${formatNumber(Math.round(seconds / 6) / 10)} min`;
    return `${formatNumber(Math.round(seconds / 360) / 10)} h`;
  }

  function percent(ratio) {
    return ratio == null ? "—" : `${formatNumber(Math.round(ratio * 1e6) / 1e4)} %`;
  }

  // An HTML element: attributes (`data-*` included) and children (strings become text).
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value != null) node.setAttribute(key, String(value));
    }
    node.append(...children.filter((c) => c != null));
    return node;
  }

  function svg(tag, attrs = {}, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value != null) node.setAttribute(key, String(value));
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  // With `serving.read_token` set, the token comes in the URL's fragment (`#token=...`), which
  // the browser never sends to a server, and is kept for the tab's session.
  const TOKEN_KEY = "lambda-read-token";
  const readToken = (() => {
    const given = new URLSearchParams(location.hash.slice(1)).get("token");
    if (given) sessionStorage.setItem(TOKEN_KEY, given);
    return given || sessionStorage.getItem(TOKEN_KEY);
  })();

  async function getJson(path) {
    const headers = { accept: "application/json" };
    if (readToken) headers.authorization = `Bearer ${readToken}`;
    const response = await fetch(path, { headers });
    const body = await response.json().catch(() => null);
    if (response.status === 401) {
      throw new Error(`${path}: this server needs its read token; open the dashboard as /#token=<serving.read_token>`);
    }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
      throw new Error(`${path}: ${message}`);
    }
    return body;
  }

  function settle(target, state, ...children) {
    target.replaceChildren(...children);
    target.dataset.state = state;
  }

  function showError(target, error) {
    settle(target, "error", el("p", { class: "error" }, String(error.message || error)));
  }

  // ---- Choices ------------------------------------------------------------------------------

  // What the page shows, from the query string and the metric catalogue.
  function readChoices(params, metrics) {
    const metric = metrics.find((m) => m.name === params.get("metric")) || metrics[0];
    if (!metric) throw new Error("the catalogue has no metrics");
    const bucket = parseDuration(metric.bucket);
    const explicitStep = parseDuration(params.get("step"));
    const range = params.get("range") || "1h";
    let from = Date.parse(params.get("from") || "");
    let to = Date.parse(params.get("to") || "");
    const custom = !Number.isNaN(from) && !Number.isNaN(to);
    const span = custom ? to - from : parseDuration(range) || 3600000;
    const step = explicitStep || bucket * Math.max(1, Math.ceil(span / bucket / AUTO_POINTS));
    if (!custom) {
      // The range ends with the bucket that is filling now.
      to = Math.ceil(Date.now() / step) * step;
      from = to - span;
    }
    const groupBy = metric.dimensions.includes(params.get("group_by")) ? params.get("group_by") : "";
    return {
      metric,
      range: custom ? "custom" : range,
      from,
      to,
      step,
      explicitStep: params.get("step") || "",
      window: params.get("window") || "",
      groupBy,
      refresh: Number(params.get("refresh")) || 0,
    };
  }

  function fillControls(metrics, choices) {
    const metricSelect = $("metric");
    metricSelect.replaceChildren(...metrics.map((m) => el("option", { value: m.name }, m.name)));
    metricSelect.value = choices.metric.name;
    const range = $("range");
    if (![...range.options].some((o) => o.value === choices.range)) {
      range.append(el("option", { value: choices.range }, `last ${choices.range}`));
    }
    range.value = choices.range;
    $("from").value = choices.range === "custom" ? new Date(choices.from).toISOString() : "";
    $("to").value = choices.range === "custom" ? new Date(choices.to).toISOString() : "";
    $("step").value = choices.explicitStep;
    $("window").value = choices.window;
    $("refresh").value = choices.refresh ? String(choices.refresh) : "";
    fillGroups(metrics, choices.groupBy);
    showCustomRange();
  }

  function fillGroups(metrics, selected) {
    const metric = metrics.find((m) => m.name === $("metric").value);
    const dims = metric ? metric.dimensions : [];
    $("group_by").replaceChildren(
      el("option", { value: "" }, "(none)"),
      ...dims.map((d) => el("option", { value: d }, d)),
    );
    $("group_by").value = dims.includes(selected) ? selected : "";
  }

  function showCustomRange() {
    const custom = $("range").value === "custom";
    for (const label of document.querySelectorAll(".custom-range")) label.hidden = !custom;
  }

  // Submits only what was chosen, so URLs stay short and a preset range drops from/to.
  function submitControls(event) {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const [key, value] of new FormData($("controls"))) {
      if (value === "") continue;
      if ((key === "from" || key === "to") && $("range").value !== "custom") continue;
      if (key === "range" && value === "custom") continue;
      params.set(key, value);
    }
    window.location.search = params.toString();
  }

  function seriesPath(choices) {
    const params = new URLSearchParams({
      from: new Date(choices.from).toISOString(),
      to: new Date(choices.to).toISOString(),
      // A step the page could not read goes to the API as written, which says what is wrong.
      step: choices.explicitStep || formatDuration(choices.step),
    });
    if (choices.window) params.set("window", choices.window);
    if (choices.groupBy) params.set("group_by", choices.groupBy);
    return `/v1/metrics/${encodeURIComponent(choices.metric.name)}?${params}`;
  }

  // ---- The chart ----------------------------------------------------------------------------

  function groupLabel(group) {
    const entries = Object.entries(group || {});
    if (entries.length === 0) return "all";
    return entries.map(([k, v]) => `${k}=${v == null ? "(none)" : v}`).join(", ");
  }

  // A round grid step giving about four lines over `span`.
  function gridStep(span) {
    const raw = span > 0 ? span / 4 : 0.25;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    return [1, 2, 2.5, 5, 10].find((f) => f * magnitude >= raw) * magnitude;
  }

  // "12:20 – 12:35", the date too when the interval does not sit within one day.
  function formatInterval(interval) {
    const from = Date.parse(interval.from), to = Date.parse(interval.to);
    const sameDay = new Date(from).toISOString().slice(0, 10) === new Date(to).toISOString().slice(0, 10);
    return sameDay ? `${formatTime(from, false)} – ${formatTime(to, false)}` : `${formatInstant(interval.from)} – ${formatInstant(interval.to)}`;
  }

  function drawPoint(parent, x, y, colour, point, label) {
    let mark;
    if (point.source === "mixed") {
      mark = svg("rect", {
        x: x - 3.5, y: y - 3.5, width: 7, height: 7, fill: colour, stroke: colour,
        transform: `rotate(45 ${x} ${y})`,
      }, parent);
    } else {
      mark = svg("circle", { cx: x, cy: y, r: 3.6, stroke: colour, fill: point.source === "batch" ? colour : null }, parent);
    }
    mark.setAttribute("class", `point point-${point.source}`);
    mark.dataset.source = point.source;
    mark.dataset.t = point.t;
    mark.dataset.value = String(point.value);
    mark.dataset.group = label;
    svg("title", {}, mark).textContent =
      `${label} · ${formatInstant(point.t)} · ${formatNumber(point.value)} · ${point.source}`;
  }

  function renderChart(answer, choices) {
    const width = 1000, height = 360;
    const m = { left: 64, right: 20, top: 24, bottom: 36 };
    const from = Date.parse(answer.from), to = Date.parse(answer.to);
    const x = (t) => m.left + ((t - from) / (to - from)) * (width - m.left - m.right);
    const values = answer.series.flatMap((s) => s.points.map((p) => p.value));
    // Not Math.min(...values): a long range has more points than a call takes arguments.
    const min = values.reduce((a, v) => Math.min(a, v), 0);
    const max = values.reduce((a, v) => Math.max(a, v), 0);
    const grid = gridStep(max - min);
    const low = Math.floor(min / grid) * grid;
    const high = (Math.floor(max / grid) + 1) * grid;
    const y = (v) => height - m.bottom - ((v - low) / (high - low)) * (height - m.top - m.bottom);
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `${answer.metric} from ${answer.from} to ${answer.to}`,
    });
    const top = m.top, bottom = height - m.bottom;

    // Which side of the split answers each part of the range.
    const cutover = answer.cutover == null ? null : Date.parse(answer.cutover);
    const split = cutover == null ? from : Math.min(Math.max(cutover, from), to);
    if (split > from) {
      svg("rect", { class: "region-batch", "data-role": "region-batch", x: x(from), y: top, width: x(split) - x(from), height: bottom - top }, root);
      svg("text", { class: "region-label", x: x(from) + 4, y: top - 6 }, root).textContent = "batch view";
    }
    if (split < to) {
      svg("rect", { class: "region-speed", "data-role": "region-speed", x: x(split), y: top, width: x(to) - x(split), height: bottom - top }, root);
      svg("text", { class: "region-label", x: x(to) - 4, y: top - 6, "text-anchor": "end" }, root).textContent = "speed layer";
    }
    for (const gap of answer.gaps || []) {
      const g0 = Math.max(Date.parse(gap.from), from), g1 = Math.min(Date.parse(gap.to), to);
      if (g1 > g0) svg("rect", { class: "gap", "data-role": "gap", x: x(g0), y: top, width: x(g1) - x(g0), height: bottom - top }, root);
    }

    // Axes and grid.
    for (let i = 0; low + i * grid <= high + grid / 1e6; i++) {
      const v = low + i * grid;
      svg("line", { class: "grid", x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }, root);
      svg("text", { class: "tick-label", x: m.left - 6, y: y(v) + 4, "text-anchor": "end" }, root).textContent = formatNumber(v);
    }
    const tick = TICKS.find((t) => (to - from) / t <= 8) || TICKS[TICKS.length - 1];
    const withDate = to - from > 86400000;
    for (let t = Math.ceil(from / tick) * tick; t <= to; t += tick) {
      svg("line", { class: "axis", x1: x(t), x2: x(t), y1: bottom, y2: bottom + 4 }, root);
      svg("text", { class: "tick-label", x: x(t), y: bottom + 17, "text-anchor": "middle" }, root).textContent =
        withDate ? formatTime(t, true).slice(5, 16) : formatTime(t, false);
    }
    svg("line", { class: "axis", x1: m.left, x2: width - m.right, y1: bottom, y2: bottom }, root);
    svg("line", { class: "axis", x1: m.left, x2: m.left, y1: top, y2: bottom }, root);

    // Series: a line, and one mark per point, shaped by the layer that answered it.
    const counts = { batch: 0, speed: 0, mixed: 0 };
    const legend = [];
    answer.series.forEach((series, i) => {
      const colour = PALETTE[i % PALETTE.length];
      const label = groupLabel(series.group);
      const points = series.points.map((p) => ({ ...p, ms: Date.parse(p.t) })).sort((a, b) => a.ms - b.ms);
      const group = svg("g", { "data-series": label }, root);
      if (points.length > 1) {
        svg("polyline", {
          class: "series-line", stroke: colour,
          points: points.map((p) => `${x(p.ms).toFixed(1)},${y(p.value).toFixed(1)}`).join(" "),
        }, group);
      }
      for (const p of points) {
        drawPoint(group, x(p.ms), y(p.value), colour, p, label);
        counts[p.source] = (counts[p.source] || 0) + 1;
      }
      legend.push([colour, label, points.length]);
    });
    if (values.length === 0) {
      svg("text", { class: "empty-label", x: width / 2, y: height / 2, "text-anchor": "middle" }, root).textContent =
        "no events in this range";
    }

    // The cutover T, on top of everything it splits.
    if (cutover != null && cutover >= from && cutover <= to) {
      svg("line", { class: "cutover", "data-role": "cutover", "data-t": answer.cutover, x1: x(cutover), x2: x(cutover), y1: top - 2, y2: bottom }, root);
      const right = x(cutover) > width - 160;
      svg("text", {
        class: "cutover-label", "data-role": "cutover-label",
        x: x(cutover) + (right ? -6 : 6), y: top + 14, "text-anchor": right ? "end" : "start",
      }, root).textContent = `T ${formatTime(cutover, false)}`;
    }

    const chart = $("chart");
    settle(chart, "ready", root);
    chart.dataset.points = String(counts.batch + counts.speed + counts.mixed);
    chart.dataset.batch = String(counts.batch);
    chart.dataset.speed = String(counts.speed);
    chart.dataset.mixed = String(counts.mixed);
    chart.dataset.series = String(answer.series.length);

    $("legend").replaceChildren(
      ...legend.map(([colour, label, n]) => {
        const swatch = svg("svg", { viewBox: "0 0 14 14" });
        svg("rect", { x: 1, y: 5, width: 12, height: 4, fill: colour }, swatch);
        return el("span", {}, swatch, `${label} (${n})`);
      }),
      markLegend("circle", "batch", "batch view (before T)"),
      markLegend("circle", "speed", "speed layer (from T)"),
      markLegend("rect", "mixed", "window spans T"),
    );
    const total = counts.batch + counts.speed + counts.mixed;
    $("chart-summary").textContent =
      `${formatNumber(total)} points in ${answer.series.length} series: ${counts.batch} batch, ${counts.speed} speed, ${counts.mixed} mixed · step ${answer.step}, window ${answer.window || answer.step}`;
    const notes = [];
    if (cutover == null) notes.push("No batch view promoted yet: every point comes from the speed layer.");
    else if (cutover < from || cutover > to) notes.push(`The cutover T ${formatInstant(answer.cutover)} lies outside this range.`);
    else notes.push(`Cutover T ${formatInstant(answer.cutover)} (batch version ${answer.batch_version}).`);
    if (!answer.complete) notes.push(`Incomplete: ${answer.gaps.length} gap(s) that neither layer covers, shaded.`);
    $("chart-notes").textContent = notes.join(" ");
  }

  function markLegend(shape, source, text) {
    const mark = svg("svg", { viewBox: "0 0 14 14" });
    if (shape === "rect") {
      svg("rect", { x: 3.5, y: 3.5, width: 7, height: 7, fill: "#4b5563", transform: "rotate(45 7 7)" }, mark);
    } else {
      svg("circle", { cx: 7, cy: 7, r: 4, stroke: "#4b5563", "stroke-width": 1.6, fill: source === "batch" ? "#4b5563" : "#ffffff" }, mark);
    }
    return el("span", { "data-legend": source }, mark, text);
  }

  // ---- Panels -------------------------------------------------------------------------------

  function figures(rows) {
    const list = el("dl", { class: "figures" });
    for (const [name, figure, text, raw] of rows) {
      list.append(el("dt", {}, name), el("dd", { "data-figure": figure, "data-value": raw }, text));
    }
    return list;
  }

  function renderLate(answer) {
    const late = answer.late_events;
    settle($("late"), "ready",
      figures([
        ["Late events", "late-events", formatNumber(late), late],
        ["Late rate", "late-rate", percent(answer.late_rate), answer.late_rate],
        ["Complete", "complete", answer.complete ? "yes" : "no", answer.complete],
        ["Gaps", "gaps", String((answer.gaps || []).length), (answer.gaps || []).length],
      ]),
      el("p", { class: "muted" },
        `Events of ${answer.metric} that reached the speed layer after their bucket closed, over the chosen range; the lake keeps them all, so the next batch run counts them.`),
      ...(answer.gaps || []).map((g) => el("p", { class: "error", "data-role": "gap" }, `gap ${formatInstant(g.from)} – ${formatInstant(g.to)}`)),
    );
  }

  function renderFreshness(body) {
    const speed = body.speed, batch = body.batch, lake = body.lake;
    const byPartition = new Map();
    for (const p of speed.partitions) byPartition.set(p.partition, { speed: p });
    for (const p of lake.partitions) byPartition.set(p.partition, { ...byPartition.get(p.partition), lake: p });
    const rows = [...byPartition.entries()].sort((a, b) => a[0] - b[0]).map(([partition, { speed: s, lake: l }]) =>
      el("tr", { "data-partition": partition },
        el("td", { class: "num" }, String(partition)),
        el("td", { class: "num" }, s ? formatNumber(s.next_offset) : "—"),
        el("td", {}, s ? formatInstant(s.watermark) : "—"),
        el("td", { class: "num" }, l ? formatNumber(l.next_offset) : "—"),
        el("td", {}, l ? formatInstant(l.max_event_time) : "—"),
      ));
    settle($("freshness"), "ready",
      figures([
        ["Speed watermark", "speed-watermark", formatInstant(speed.watermark), speed.watermark],
        ["Speed delay", "speed-delay", formatSeconds(speed.delay_seconds), speed.delay_seconds],
        ["Cutover T", "cutover", formatInstant(batch.cutover), batch.cutover],
        ["Batch lag", "batch-lag", formatSeconds(batch.lag_seconds), batch.lag_seconds],
        ["Batch version", "batch-version", batch.version || "none promoted", batch.version],
        ["Promoted at", "promoted-at", formatInstant(batch.promoted_at), batch.promoted_at],
        ["Lake complete until", "lake-complete-until", formatInstant(lake.complete_until), lake.complete_until],
      ]),
      el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["partition", "speed offset", "speed watermark", "lake offset", "lake newest event"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows))),
    );
  }

  function renderDivergence(body, selected) {
    const rows = body.metrics.map((m) => {
      const latest = m.latest;
      const classes = [m.metric === selected ? "selected" : null, m.above_threshold ? "above" : null].filter(Boolean).join(" ");
      return el("tr", { class: classes || null, "data-metric": m.metric, "data-above": m.above_threshold, "data-ratio": latest ? latest.ratio : null },
        el("td", {}, m.metric),
        el("td", { class: "num" }, latest ? percent(latest.ratio) : "—"),
        el("td", { class: "num" }, latest ? formatNumber(latest.difference) : "—"),
        el("td", { class: "num" }, latest ? `${formatNumber(latest.differing_buckets)} / ${formatNumber(latest.buckets)}` : "—"),
        el("td", { title: latest && latest.compared ? `${latest.compared.from} – ${latest.compared.to}` : null }, latest && latest.compared ? formatInterval(latest.compared) : "—"),
        el("td", {}, m.above_threshold ? el("span", { class: "badge bad" }, "above") : el("span", { class: "badge ok" }, "ok")));
    });
    const above = body.metrics.filter((m) => m.above_threshold).length;
    settle($("divergence"), "ready",
      figures([["Above threshold", "divergence-above", `${above} of ${body.metrics.length} metrics (threshold ${percent(body.threshold)})`, above]]),
      el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["metric", "ratio", "speed − batch", "differing buckets", "compared", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows))),
    );
  }

  function renderAlerts(body) {
    const alerts = [...body.alerts].sort((a, b) => (a.state === b.state ? 0 : a.state === "firing" ? -1 : 1));
    const firing = alerts.filter((a) => a.state === "firing").length;
    const rows = alerts.map((a) =>
      el("tr", { class: a.state, "data-alert-state": a.state, "data-rule": a.rule },
        el("td", {}, a.state),
        el("td", {}, a.rule),
        el("td", {}, a.metric),
        el("td", {}, groupLabel(a.group)),
        el("td", { class: "num" }, `${formatNumber(a.value)} > ${formatNumber(a.threshold)}`),
        el("td", { title: `${a.window.from} – ${a.window.to}` }, formatInterval(a.window)),
        el("td", {}, a.state === "firing" ? `since ${formatTime(Date.parse(a.fired_at), false)}` : `resolved ${formatTime(Date.parse(a.resolved_at), false)}`)));
    settle($("alerts"), "ready",
      figures([
        ["Firing", "alerts-firing", String(firing), firing],
        ["Resolved (24 h)", "alerts-resolved", String(alerts.length - firing), alerts.length - firing],
      ]),
      alerts.length === 0
        ? el("p", { class: "muted" }, "No alert fired in the last 24 hours.")
        : el("div", { class: "scroll" }, el("table", {},
          el("thead", {}, el("tr", {}, ...["state", "rule", "metric", "group", "value", "window", ""].map((h) => el("th", {}, h)))),
          el("tbody", {}, ...rows))),
    );
  }

  // ---- Loading ------------------------------------------------------------------------------

  async function load(metrics, params) {
    document.body.dataset.state = "loading";
    let choices;
    try {
      choices = readChoices(params, metrics);
    } catch (error) {
      showError($("chart"), error);
      document.body.dataset.state = "ready";
      return;
    }
    const metric = choices.metric;
    $("chart-title").textContent = `${metric.name}: ${metric.description}`;
    document.title = `${metric.name} · Lambda metrics`;
    // Each panel settles on its own; one failing endpoint does not blank the others.
    const series = getJson(seriesPath(choices)).then((answer) => {
      renderChart(answer, choices);
      renderLate(answer);
    }).catch((error) => {
      showError($("chart"), error);
      showError($("late"), error);
    });
    const freshness = getJson("/v1/freshness").then(renderFreshness).catch((e) => showError($("freshness"), e));
    const divergence = getJson("/v1/divergence?limit=1").then((b) => renderDivergence(b, metric.name)).catch((e) => showError($("divergence"), e));
    const alerts = getJson("/v1/alerts").then(renderAlerts).catch((e) => showError($("alerts"), e));
    await Promise.all([series, freshness, divergence, alerts]);
    document.body.dataset.state = "ready";
    if (choices.refresh > 0) setTimeout(() => load(metrics, params), choices.refresh * 1000);
  }

  async function start() {
    const params = new URLSearchParams(window.location.search);
    $("controls").addEventListener("submit", submitControls);
    $("range").addEventListener("change", showCustomRange);
    let metrics;
    try {
      metrics = (await getJson("/v1/metrics")).metrics;
      fillControls(metrics, readChoices(params, metrics));
    } catch (error) {
      for (const id of ["chart", "late", "freshness", "divergence", "alerts"]) showError($(id), error);
      document.body.dataset.state = "ready";
      return;
    }
    $("metric").addEventListener("change", () => fillGroups(metrics, $("group_by").value));
    await load(metrics, params);
  }

  start();
})();
