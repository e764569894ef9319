// The operator's dashboard: the REST API and /ws/predictions of this origin, nothing else.
// Predictions come on the WebSocket; the queue and the feed are read every refreshIntervalMs;
// model status and history when a pair's candle changes (and every STATUS_EVERY refreshes).
"use strict";

(() => {
  const KEY_STORE = "tbml.apiKey";
  const STATUS_EVERY = 6; // refreshes between two reads of every pair's model status
  const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
  const HISTORY_ROWS = 100;
  const DEGRADED_SLOTS = new Set(["refused", "load_failed", "registry_unreachable"]);
  const SVG = "http://www.w3.org/2000/svg";
  const decoder = new TextDecoder();

  const view = {
    config: null,
    predictions: {}, // pair -> model type -> body
    history: {}, // pair -> rows, newest first
    status: {}, // pair -> /api/models/{pair}/status
    health: null,
    queue: null,
    jobParams: {}, // job id -> params (for the active job's epochs)
    failures: new Map(), // what failed -> its words
    ticks: 0,
    socket: null,
    attempt: 0,
  };

  // --- small helpers ---------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    return node;
  }

  const $ = (id) => document.getElementById(id);
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
  const num = (x, digits = 3) =>
    x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);

  function utc(ms) {
    if (ms === null || ms === undefined) return "–";
    return new Date(ms).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "–";
    const sign = ms < 0 ? "-" : "";
    let s = Math.round(Math.abs(ms) / 1000);
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    if (d) return `${sign}${d} d ${h} h`;
    if (h) return `${sign}${h} h ${m} min`;
    if (m) return `${sign}${m} min ${s} s`;
    return `${sign}${s} s`;
  }

  // --- the banner: what failed ---------------------------------------------------------------

  function failed(what, message) {
    view.failures.set(what, message);
    renderBanner();
  }

  function recovered(what) {
    if (view.failures.delete(what)) renderBanner();
  }

  function renderBanner() {
    const banner = $("banner");
    banner.replaceChildren(
      ...[...view.failures].map(([what, message]) => el("p", { text: `${what} failed: ${message}` })),
    );
    banner.hidden = view.failures.size === 0;
    const status = $("service-status");
    if (view.failures.size) {
      status.className = "badge bad";
      status.textContent = "problems: see the banner";
    } else if (view.health) {
      showHealth(view.health);
    }
  }

  function showHealth(health) {
    const status = $("service-status");
    status.className = `badge ${health.status === "healthy" ? "ok" : "warn"}`;
    status.textContent = health.status;
  }

  // --- the API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY_STORE);
    if (method !== "GET" && key) headers["X-API-Key"] = key;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, "the service does not answer (network error)", null);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (error) {
      data = null;
    }
    if (!response.ok) {
      const words = data && typeof data.error === "string" ? data.error : text.slice(0, 200);
      throw new ApiError(response.status, `${response.status}: ${words || response.statusText}`, data);
    }
    return data;
  }

  // A read the page depends on: its failure goes to the banner, its success clears it.
  async function read(path) {
    const what = `GET ${path}`;
    try {
      const data = await api("GET", path);
      recovered(what);
      return data;
    } catch (error) {
      failed(what, error.message);
      return null;
    }
  }

  // --- pairs -----------------------------------------------------------------------------------

  function primaryModel() {
    return view.config.enabledModels[0];
  }

  function pairDegraded(pair) {
    const reasons = [];
    const health = view.health;
    if (!health) return reasons;
    for (const [modelType, slot] of Object.entries((health.models || {})[pair] || {})) {
      if (DEGRADED_SLOTS.has(slot.state)) reasons.push(`${modelType} ${slot.state.replace("_", " ")}`);
    }
    if ((health.stale?.feeds || []).includes(pair)) reasons.push("feed stale");
    const feed = (health.feed || {})[pair];
    if (feed && feed.state === "failing") reasons.push("feed failing");
    for (const entry of health.drift || []) {
      if (entry.pair === pair && entry.drifting) reasons.push(`${entry.modelType} drifting`);
    }
    return reasons;
  }

  function flagsOf(body, pair) {
    const flags = [];
    if (!body) return flags;
    if (body.fallback) flags.push(["fallback: no model answered, neutral HOLD", "bad"]);
    if (body.unproven) flags.push(["unproven: did not beat its baselines, HOLD", ""]);
    if (body.stale) flags.push(["stale: candle too old, HOLD", "bad"]);
    if (body.modelStale) flags.push([`model stale: data ${num(body.modelAgeHours, 0)} h old`, ""]);
    const degraded = pairDegraded(pair);
    if (degraded.length) flags.push([`degraded: ${degraded.join(", ")}`, "bad"]);
    if (!flags.length) flags.push(["proven, fresh", "ok"]);
    return flags;
  }

  function ageOf(body) {
    // The candle's age when the answer was made, grown by the time since.
    if (!body || body.candleAgeMs === undefined) return null;
    return body.candleAgeMs + Math.max(0, Date.now() - (body.timestamp || Date.now()));
  }

  function chart(rows) {
    const width = 300;
    const height = 90;
    const pad = 12;
    const root = svg("svg", {
      class: "chart",
      viewBox: `0 0 ${width} ${height}`,
      preserveAspectRatio: "none",
      role: "img",
      "aria-label": "predicted probability of up (line) and realised outcomes (dots)",
    });
    root.append(svg("rect", { class: "frame", x: 0.5, y: 0.5, width: width - 1, height: height - 1 }));
    const y = (p) => pad + (1 - p) * (height - 2 * pad);
    root.append(svg("line", { class: "half", x1: 0, x2: width, y1: y(0.5), y2: y(0.5) }));
    const ordered = [...(rows || [])].reverse(); // oldest first
    if (!ordered.length) {
      const label = svg("text", { class: "label", x: 8, y: height / 2 });
      label.textContent = "no predictions recorded yet";
      root.append(label);
      return root;
    }
    const step = ordered.length > 1 ? (width - 2 * pad) / (ordered.length - 1) : 0;
    const x = (i) => pad + i * step;
    const points = ordered.map((row, i) => `${x(i).toFixed(1)},${y(row.prediction).toFixed(1)}`);
    root.append(svg("polyline", { class: "prob", points: points.join(" ") }));
    ordered.forEach((row, i) => {
      if (row.outcome !== "up" && row.outcome !== "down") return;
      root.append(
        svg("circle", {
          class: row.correct ? "hit" : "miss",
          cx: x(i).toFixed(1),
          cy: y(row.outcome === "up" ? 1 : 0).toFixed(1),
          r: 2,
        }),
      );
    });
    const top = svg("text", { class: "label", x: 2, y: 9 });
    top.textContent = "up";
    const bottom = svg("text", { class: "label", x: 2, y: height - 2 });
    bottom.textContent = "down";
    root.append(top, bottom);
    return root;
  }

  function liveFigures(pair) {
    const entry = view.status[pair]?.individual?.[primaryModel()];
    const version = entry?.modelInfo?.version;
    const live = version ? entry.liveAccuracy?.[version] : null;
    if (!live) {
      return el("p", { class: "figures muted", text: "live figures: no realised outcome yet" });
    }
    const range = (low, high, format) => el("span", { class: "muted", text: ` ${format(low)}–${format(high)}` });
    const rows = [
      el(
        "tr",
        {},
        el("td", { text: `v${version}` }),
        el("td", { class: "num" }, pct(live.accuracy), range(live.interval.low, live.interval.high, (x) => (100 * x).toFixed(0))),
        el("td", { class: "num" }, num(live.logLoss.value), range(live.logLoss.low, live.logLoss.high, (x) => num(x, 2))),
      ),
    ];
    for (const [name, score] of Object.entries(live.baselines || {})) {
      rows.push(
        el(
          "tr",
          { class: "muted" },
          el("td", { text: name.replace("_", " ") }),
          el("td", { class: "num", text: pct(score.accuracy) }),
          el("td", { class: "num", text: num(score.logLoss) }),
        ),
      );
    }
    const versus = live.versusBaseline;
    return el(
      "div",
      { class: "figures" },
      el(
        "table",
        { class: "figures" },
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            el("th", { text: `live n=${live.predictions}` }),
            el("th", { class: "num", text: "accuracy" }),
            el("th", { class: "num", text: "log loss" }),
          ),
        ),
        el("tbody", {}, rows),
      ),
      el("p", { class: "muted", text: `intervals: ${Math.round(100 * live.interval.level)} %; baselines on the same candles` }),
      versus
        ? el("p", {
            class: "line",
            text: `vs ${versus.baseline.replace("_", " ")}: ${versus.verdict} (Δ log loss ${num(versus.mean)}, ${num(versus.low)}…${num(versus.high)})`,
          })
        : null,
    );
  }

  function renderPair(pair) {
    const card = $(`pair-${pair}`);
    if (!card) return;
    const models = view.predictions[pair] || {};
    const body = models[primaryModel()] || Object.values(models)[0];
    const p = body?.prediction;
    const header = el(
      "h3",
      {},
      el("span", { text: pair }),
      el("span", { class: `signal ${p ? p.signal : ""}`, "data-field": "signal", text: p ? p.signal : "…" }),
    );
    const others = Object.entries(models)
      .filter(([, other]) => other !== body)
      .map(([modelType, other]) =>
        el("div", {
          class: "other",
          text: `${modelType} v${other.modelVersion ?? "–"}: ${num(other.prediction.prediction)} ${other.prediction.direction} ${other.prediction.signal}`,
        }),
      );
    const content = body
      ? [
          el(
            "div",
            { class: "line" },
            el("span", { class: `big ${p.direction}`, "data-field": "probability", text: num(p.prediction) }),
            ` ${p.direction} · confidence ${num(p.confidence, 2)}`,
          ),
          el("div", {
            class: "line muted",
            text: `${p.modelType}${body.modelVersion ? ` v${typeof body.modelVersion === "string" ? body.modelVersion : "ensemble"}` : ""}`,
          }),
          el(
            "div",
            { class: "flags" },
            flagsOf(body, pair).map(([text, kind]) => el("span", { class: `flag ${kind}`, text })),
          ),
          el("div", {
            class: "line",
            "data-field": "candle",
            "data-candle-time": body.candleTime,
            text: `candle ${utc(body.candleTime)}, closed ${duration(ageOf(body))} ago`,
          }),
          body.reason ? el("div", { class: "reason", text: body.reason }) : null,
          others,
        ]
      : [el("p", { class: "muted", text: "no prediction yet" })];
    const rows = (view.history[pair] || []).filter((row) => row.modelType === (p?.modelType ?? primaryModel()));
    card.replaceChildren(header, ...content.flat().filter((node) => node), chart(rows), liveFigures(pair));
  }

  function renderPairs() {
    for (const pair of view.config.pairs) renderPair(pair);
  }

  async function loadPrediction(pair) {
    const what = `GET /api/predictions/${pair}`;
    try {
      const body = await api("GET", `/api/predictions/${encodeURIComponent(pair)}`);
      recovered(what);
      view.predictions[pair] = { ...view.predictions[pair], [body.prediction.modelType]: body };
    } catch (error) {
      // A pair without a model answers a fallback; an error here is the service's own.
      failed(what, error.message);
    }
    renderPair(pair);
  }

  async function loadHistory(pair) {
    const data = await read(`/api/predictions/${encodeURIComponent(pair)}/history?limit=${HISTORY_ROWS}`);
    if (data) {
      view.history[pair] = data.predictions;
      renderPair(pair);
    }
  }

  async function loadStatus(pair) {
    const data = await read(`/api/models/${encodeURIComponent(pair)}/status`);
    if (data) {
      view.status[pair] = data;
      renderPair(pair);
      renderModels();
    }
  }

  // --- models ----------------------------------------------------------------------------------

  function metricsText(metrics) {
    if (!metrics) return "–";
    const parts = [];
    if (metrics.accuracy !== undefined) parts.push(`acc ${pct(metrics.accuracy)}`);
    for (const name of ["log_loss", "logLoss"]) {
      if (metrics[name] !== undefined) parts.push(`log loss ${num(metrics[name])}`);
    }
    if (!parts.length) {
      for (const [name, value] of Object.entries(metrics).slice(0, 3)) {
        if (typeof value === "number") parts.push(`${name} ${num(value)}`);
      }
    }
    return parts.join(", ") || "–";
  }

  function baselinesText(baselines) {
    if (!baselines) return "–";
    return Object.entries(baselines)
      .map(([name, metrics]) => `${name}: ${metricsText(metrics)}`)
      .join("; ");
  }

  function liveText(entry, version) {
    const live = entry.liveAccuracy?.[version];
    if (!live) return "no outcomes yet";
    const versus = live.versusBaseline;
    const verdict = versus ? `; vs ${versus.baseline}: ${versus.verdict}` : "";
    return `acc ${pct(live.accuracy)} [${pct(live.interval.low)}–${pct(live.interval.high)}], log loss ${num(live.logLoss.value)} [${num(live.logLoss.low)}–${num(live.logLoss.high)}], n=${live.predictions}${verdict}`;
  }

  function mlflowLinks(info) {
    const base = view.config.mlflowUiUrl;
    const links = [
      el("a", {
        href: `${base}/#/models/${encodeURIComponent(info.name)}/versions/${encodeURIComponent(info.version)}`,
        target: "_blank",
        rel: "noopener",
        text: `${info.name} v${info.version}`,
      }),
    ];
    if (info.runId) {
      links.push(" · ", el("a", { href: `${base}/#/runs/${encodeURIComponent(info.runId)}`, target: "_blank", rel: "noopener", text: "run" }));
    }
    return links;
  }

  function dataRangeText(range) {
    if (!range) return "–";
    if (typeof range === "string") return range;
    return `${String(range.start ?? "").slice(0, 16)} … ${String(range.end ?? "").slice(0, 16)}`;
  }

  function versionRow(pair, modelType, role, info, entry, extra) {
    return el(
      "tr",
      { "data-pair": pair, "data-model": modelType, "data-role": role },
      el("td", { text: `${pair} ${modelType}` }),
      el("td", { text: role }),
      el("td", {}, mlflowLinks(info)),
      el("td", {
        text: `${info.unproven ? "unproven" : info.beatsBaseline ? "beats baselines" : "–"}; calibration ${info.calibration ?? "none"}`,
      }),
      el("td", { text: metricsText(info.testMetrics) }),
      el("td", { class: "muted", text: baselinesText(info.baselineMetrics) }),
      el("td", { text: extra ?? liveText(entry, info.version) }),
      el("td", { text: dataRangeText(info.dataRange) }),
      el("td", { text: `loaded ${duration(Date.now() - info.loadedAt)} ago` }),
    );
  }

  function renderModels() {
    const rows = [];
    for (const pair of view.config.pairs) {
      const status = view.status[pair];
      if (!status) continue;
      for (const [modelType, entry] of Object.entries(status.individual || {})) {
        if (!entry.modelInfo) {
          rows.push(
            el(
              "tr",
              { "data-pair": pair, "data-model": modelType },
              el("td", { text: `${pair} ${modelType}` }),
              el("td", { text: "none" }),
              el("td", { colspan: 7, class: "muted", text: entry.status?.message || "no production version" }),
            ),
          );
          continue;
        }
        rows.push(versionRow(pair, modelType, "production", entry.modelInfo, entry));
        const challenger = entry.challenger;
        if (challenger && challenger.modelInfo) {
          const c = challenger.comparison || {};
          const text = `${c.verdict ?? "–"}: ${c.rows ?? 0}/${c.needed ?? "?"} rows, Δ log loss ${num(c.deltaMean)} [${num(c.low)}…${num(c.high)}], since ${duration(Date.now() - challenger.since)} ago`;
          rows.push(versionRow(pair, modelType, "challenger", challenger.modelInfo, entry, text));
        } else if (entry.challengerError) {
          rows.push(
            el(
              "tr",
              { "data-pair": pair, "data-model": modelType, "data-role": "challenger" },
              el("td", { text: `${pair} ${modelType}` }),
              el("td", { text: "challenger" }),
              el("td", { colspan: 7, class: "bad", text: `not loaded: ${entry.challengerError}` }),
            ),
          );
        }
      }
    }
    const head = el(
      "tr",
      {},
      ["slot", "role", "version (MLflow)", "gate", "offline test", "offline baselines", "live", "data range", "age"].map(
        (name) => el("th", { text: name }),
      ),
    );
    $("model-table").replaceChildren(
      rows.length
        ? el("table", { class: "small" }, el("thead", {}, head), el("tbody", {}, rows))
        : el("p", { class: "muted", text: "reading the models…" }),
    );
  }

  // --- queue -----------------------------------------------------------------------------------

  function message(text, kind) {
    const node = $("action-message");
    node.textContent = text;
    node.className = `message ${kind}`;
  }

  async function act(what, method, path, body) {
    try {
      const answer = await api(method, path, body);
      message(`${what}: ${answer?.message || "done"}`, "ok");
    } catch (error) {
      message(`${what} refused: ${error.message}`, "error");
    }
    await refreshQueue();
  }

  function cancelButton(job) {
    return el("button", {
      type: "button",
      class: "small",
      "data-action": "cancel",
      "data-job": job.id,
      text: "cancel",
      onclick: () => act(`cancel ${job.id}`, "DELETE", `/api/training/job/${encodeURIComponent(job.id)}`),
    });
  }

  async function activeParams(job) {
    if (view.jobParams[job.id] !== undefined) return;
    view.jobParams[job.id] = null;
    try {
      view.jobParams[job.id] = (await api("GET", `/api/training/job/${encodeURIComponent(job.id)}`)).params || {};
      renderQueue();
    } catch (error) {
      delete view.jobParams[job.id];
    }
  }

  function activeBlock(queue) {
    const jobs = queue.active?.jobs || [];
    if (!jobs.length) return el("p", { class: "muted", id: "active-none", text: "no training running" });
    return jobs.map((job) => {
      activeParams(job);
      const params = view.jobParams[job.id] || {};
      const progress = job.progress; // {epoch, epochs, loss, valLoss} when the API gives it
      const epochs = progress?.epochs ?? params.epochs;
      return el(
        "div",
        { class: "active-job", "data-job": job.id, "data-status": job.status },
        el(
          "div",
          { class: "line" },
          el("strong", { text: `${job.pair} ${job.modelType}` }),
          ` ${job.status}${job.cancelRequested ? " (cancel requested)" : ""}, for ${duration(job.duration)}, attempt ${job.attempt} `,
          job.cancelRequested ? null : cancelButton(job),
        ),
        progress
          ? [
              el("progress", { max: progress.epochs, value: progress.epoch }),
              el("div", {
                class: "line",
                text: `${progress.phase === "refit" ? "refit on every candle: " : ""}epoch ${progress.epoch} of ${progress.epochs ?? "?"}, loss ${num(progress.loss, 4)}${progress.phase === "refit" ? "" : `, val loss ${num(progress.valLoss, 4)}`}`,
              }),
            ]
          : el("div", {
              class: "line muted",
              text: `${epochs ? `${epochs} epochs; ` : ""}no epoch finished yet (the run's metrics show each one)`,
            }),
        job.runId ? el("div", { class: "line" }, el("a", { href: `${view.config.mlflowUiUrl}/#/runs/${encodeURIComponent(job.runId)}`, target: "_blank", rel: "noopener", text: `run ${job.runId.slice(0, 8)}` })) : null,
      );
    });
  }

  function table(headers, rows, empty, id) {
    if (!rows.length) return el("p", { class: "muted", id, text: empty });
    return el(
      "table",
      { class: "small", id },
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows),
    );
  }

  function renderQueue() {
    const queue = view.queue;
    if (!queue) return;
    const queued = (queue.queued?.jobs || []).map((job) =>
      el(
        "tr",
        { "data-job": job.id, "data-status": "queued" },
        el("td", { class: "num", text: job.queuePosition }),
        el("td", { text: `${job.pair} ${job.modelType}` }),
        el("td", { class: "num", text: job.priority }),
        el("td", { text: job.requestedBy }),
        el("td", { text: job.reason || "–" }),
        el("td", { text: duration(job.queuedFor) }),
        el("td", {}, cancelButton(job)),
      ),
    );
    const cooldowns = (queue.cooldowns || []).map((c) =>
      el(
        "tr",
        {},
        el("td", { text: `${c.pair} ${c.modelType}` }),
        el("td", { text: `${duration(Math.max(0, c.endsAt - Date.now()))} left` }),
        el("td", {}, el("button", {
          type: "button",
          class: "small",
          text: "clear",
          onclick: () => act(`clear cooldown ${c.pair} ${c.modelType}`, "POST", "/api/training/clear-cooldowns", { pair: c.pair, modelType: c.modelType }),
        })),
      ),
    );
    const history = (queue.history?.recent || []).map((job) =>
      el(
        "tr",
        { "data-job": job.id, "data-status": job.status },
        el("td", { text: `${job.pair} ${job.modelType}` }),
        el("td", { class: `state-${job.status === "succeeded" ? "ok" : "failing"}`, text: job.status }),
        el("td", { text: job.registeredVersion ? `v${job.registeredVersion} ${job.promotion || ""}` : "–" }),
        el("td", { text: job.error || job.cancelReason || job.promotionReason || "" }),
        el("td", { text: job.finishedAt ? `${duration(Date.now() - job.finishedAt)} ago` : "–" }),
      ),
    );
    const paused = queue.paused
      ? el("p", { class: "message error", id: "paused", text: `dispatch paused: ${queue.pausedReason || "emergency stop"}` })
      : null;
    $("queue-state").replaceChildren(
      ...[
        paused,
        el("h4", { text: "Training now" }),
        activeBlock(queue),
        el("h4", { text: `Queued (${queue.queued?.count ?? 0}, dispatch order)` }),
        table(["#", "slot", "priority", "by", "why", "waiting", ""], queued, "nothing queued", "queued-jobs"),
        el("h4", { text: "Cooldowns" }),
        table(["slot", "time left", ""], cooldowns, "no cooldown", "cooldowns"),
        el("h4", { text: `Recent (${queue.history?.total ?? 0} ended)` }),
        table(["slot", "outcome", "version", "detail", "ended"], history, "no training has ended", "history"),
      ]
        .flat()
        .filter((node) => node),
    );
    $("resume-button").hidden = !queue.paused;
    $("stop-button").hidden = queue.paused;
  }

  async function refreshQueue() {
    const data = await read("/api/training/queue");
    if (data) {
      view.queue = data.queue;
      renderQueue();
    }
  }

  // --- feed and health -------------------------------------------------------------------------

  function renderFeed() {
    const health = view.health;
    if (!health) return;
    const rows = view.config.pairs.map((pair) => {
      const feed = (health.feed || {})[pair] || {};
      return el(
        "tr",
        { "data-pair": pair },
        el("td", { text: pair }),
        el("td", { class: `state-${feed.state}`, text: feed.state || "–" }),
        el("td", { text: utc(feed.newestCandle) }),
        el("td", { class: "num", text: duration(feed.lagMs) }),
        el("td", { text: feed.lastError ? `${feed.lastError} (${feed.consecutiveFailures}×)` : "–" }),
      );
    });
    $("feed-table").replaceChildren(
      el(
        "table",
        { class: "small" },
        el("thead", {}, el("tr", {}, ["pair", "state", "newest candle", "lag", "last error"].map((h) => el("th", { text: h })))),
        el("tbody", {}, rows),
      ),
      el("p", {
        class: "muted",
        text: `database ${health.database?.state ?? "–"} · stream ${health.stream ? `${health.stream.connections} client(s)` : "–"} · up ${duration(1000 * health.uptimeSeconds)}`,
      }),
    );
    if (!view.failures.size) showHealth(health);
  }

  async function refreshHealth() {
    const data = await read("/api/health");
    if (data) {
      view.health = data;
      renderFeed();
      // A pair whose newest candle the page has not shown (no served model streams it, or a
      // message was missed): read its prediction.
      for (const pair of view.config.pairs) {
        const newest = data.feed?.[pair]?.newestCandle;
        const shown = Object.values(view.predictions[pair] || {}).map((body) => body.candleTime);
        if (newest && (!shown.length || Math.max(...shown) < newest)) loadPrediction(pair);
      }
    }
  }

  // --- the latest backtest ----------------------------------------------------------------------

  function renderBacktest(data) {
    const box = $("backtest-summary");
    if (!data.found) {
      box.replaceChildren(
        el("span", { text: "No backtest yet: " }),
        el("code", { text: "make backtest" }),
        el("span", { text: " replays the lifecycle over past candles and records it in MLflow." }),
      );
      return;
    }
    const m = data.metrics || {};
    const signed = (x) => (x === undefined || x === null ? "–" : `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)} %`);
    box.replaceChildren(
      el("div", { class: "line", text: `${(data.pairs || []).join(", ")} ${data.modelType || ""}, ${utc(Date.parse(data.start))} – ${utc(Date.parse(data.end))}` }),
      el("div", {
        class: "line",
        text: `after fees ${signed(m.returnAfterFees)} (move gate off ${signed(m.returnAfterFeesNoMoveGate)}) against buy-and-hold ${signed(m.buyHoldReturn)}; max drawdown ${signed(m.maxDrawdown === undefined ? undefined : -m.maxDrawdown)}`,
      }),
      el("div", {
        class: "line",
        text: `${m.signalHours ?? "–"} of ${m.hours ?? "–"} hours answered BUY or SELL; ${m.trainings ?? "–"} trainings, ${m.promotions ?? "–"} promotions`,
      }),
      el("div", { class: "line" }, el("a", { href: data.url, target: "_blank", rel: "noopener", text: `MLflow run ${String(data.runId).slice(0, 8)}` })),
    );
  }

  async function refreshBacktest() {
    const data = await read("/api/backtests/latest");
    if (data) renderBacktest(data);
  }

  // --- the stream ------------------------------------------------------------------------------

  function streamState(text, kind) {
    const node = $("stream-status");
    node.textContent = `stream: ${text}`;
    node.className = `badge ${kind}`;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/predictions`);
    socket.binaryType = "arraybuffer"; // the service sends each message as a binary frame
    view.socket = socket;
    socket.addEventListener("open", () => {
      const reconnected = view.attempt > 0;
      view.attempt = 0;
      recovered("the live stream (/ws/predictions)");
      streamState("live", "ok");
      // What was missed while away: the page reads everything again.
      if (reconnected) refreshAll(true);
    });
    socket.addEventListener("message", (event) => {
      let body;
      try {
        const text = typeof event.data === "string" ? event.data : decoder.decode(event.data);
        body = JSON.parse(text);
      } catch (error) {
        return;
      }
      if (!body || !body.pair || !body.prediction) return;
      const previous = view.predictions[body.pair]?.[body.prediction.modelType];
      view.predictions[body.pair] = { ...view.predictions[body.pair], [body.prediction.modelType]: body };
      renderPair(body.pair);
      if (!previous || previous.candleTime !== body.candleTime || previous.modelVersion !== body.modelVersion) {
        loadHistory(body.pair);
        loadStatus(body.pair);
      }
    });
    socket.addEventListener("close", (event) => {
      if (view.socket !== socket) return;
      const wait = BACKOFF_MS[Math.min(view.attempt, BACKOFF_MS.length - 1)];
      view.attempt += 1;
      const why = event.reason ? `closed (${event.code}: ${event.reason})` : `closed (code ${event.code})`;
      failed("the live stream (/ws/predictions)", `${why}; reconnecting in ${wait / 1000} s`);
      streamState("reconnecting", "bad");
      setTimeout(connect, wait);
    });
  }

  // --- refreshes -------------------------------------------------------------------------------

  async function refreshAll(everything) {
    const work = [refreshQueue(), refreshHealth()];
    if (everything) {
      for (const pair of view.config.pairs) {
        work.push(loadPrediction(pair), loadHistory(pair), loadStatus(pair));
      }
      work.push(refreshBacktest());
    }
    await Promise.all(work);
    renderPairs(); // ages and degraded flags move on
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  function tick() {
    view.ticks += 1;
    refreshAll(view.ticks % STATUS_EVERY === 0);
  }

  // --- the forms -------------------------------------------------------------------------------

  function renderKeyState() {
    const key = sessionStorage.getItem(KEY_STORE);
    const needed = view.config?.apiKeyRequired;
    $("key-state").textContent = key
      ? "a key is kept for this browser session"
      : needed
        ? "no key: actions need one (ML_API_KEY is set)"
        : "no key needed (ML_API_KEY is not set)";
  }

  function wireForms() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("api-key").value.trim();
      if (value) sessionStorage.setItem(KEY_STORE, value);
      $("api-key").value = "";
      renderKeyState();
    });
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      renderKeyState();
    });
    const pairs = $("train-pair");
    pairs.replaceChildren(...view.config.pairs.map((pair) => el("option", { value: pair, text: pair })));
    const models = $("train-model");
    models.replaceChildren(...view.config.modelTypes.map((m) => el("option", { value: m, text: m })));
    models.value = primaryModel();
    $("train-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const pair = pairs.value;
      const modelType = models.value;
      const body = {
        epochs: Number($("train-epochs").value),
        priority: Number($("train-priority").value),
      };
      act(`train ${pair} ${modelType}`, "POST", `/api/train/${encodeURIComponent(pair)}/${encodeURIComponent(modelType)}`, body);
    });
    $("stop-button").addEventListener("click", () => {
      if (window.confirm("Kill the running training and cancel every queued job?")) {
        act("emergency stop", "POST", "/api/training/emergency-stop", { reason: "dashboard" });
      }
    });
    $("resume-button").addEventListener("click", () => act("resume", "POST", "/api/training/resume"));
    $("clear-cooldowns-button").addEventListener("click", () =>
      act("clear cooldowns", "POST", "/api/training/clear-cooldowns", {}),
    );
  }

  // --- start -----------------------------------------------------------------------------------

  async function start() {
    while (!view.config) {
      view.config = await read("/dashboard/config.json");
      if (!view.config) await new Promise((resolve) => setTimeout(resolve, 2000));
    }
    $("pair-cards").replaceChildren(
      ...view.config.pairs.map((pair) => el("article", { class: "card", id: `pair-${pair}`, "data-pair": pair })),
    );
    wireForms();
    renderKeyState();
    renderPairs();
    renderModels();
    connect();
    await refreshAll(true);
    setInterval(tick, view.config.refreshIntervalMs);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
