// The live dashboard: subscribes to /dashboard/events and draws what it says.
//
// Two ways in, because no key may go in a URL:
// - no admin key needed: EventSource, which reconnects by itself (retry: 2000);
// - the server answers 401: ask for the admin key once, keep it in sessionStorage,
//   and read the stream with fetch (which can send an Authorization header) and the
//   project's SSE parser, reconnecting the same way.
// Everything shown goes in as text nodes or SVG attributes; nothing as HTML.

import { SSEParser } from "/static/sse.js";

const EVENTS_URL = "/dashboard/events";
const KEY_STORAGE = "tokenpipe.dashboard.adminKey";
const SVG_NS = "http://www.w3.org/2000/svg";
const WIDTH = 300;
const HEIGHT = 80;

let retryMs = 2000;
/** @type {string} */
let lastEventId = "";

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

// --- connection --------------------------------------------------------------

/** @param {"connecting" | "live" | "reconnecting" | "key"} state */
function setStatus(state) {
  const status = $("status");
  if (status.dataset.state === state) return;
  status.dataset.state = state;
  status.textContent = {
    connecting: "connecting…",
    live: "live",
    reconnecting: "reconnecting…",
    key: "admin key needed",
  }[state];
}

const sleep = (/** @type {number} */ ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Probe once without a key; then EventSource, or the key form on a 401. */
async function start() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key !== null) {
    void streamWithKey(key);
    return;
  }
  for (;;) {
    const probe = new AbortController();
    let status = 0;
    try {
      const response = await fetch(EVENTS_URL, { signal: probe.signal, cache: "no-store" });
      status = response.status;
    } catch {
      status = 0; // the server is unreachable
    } finally {
      probe.abort(); // only the status was wanted
    }
    if (status === 401) {
      askForKey("");
      return;
    }
    if (status === 200) {
      streamWithEventSource();
      return;
    }
    setStatus("reconnecting");
    await sleep(retryMs);
  }
}

function streamWithEventSource() {
  const source = new EventSource(EVENTS_URL);
  source.addEventListener("stats", (event) => {
    setStatus("live");
    lastEventId = event.lastEventId;
    show(JSON.parse(event.data));
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // A refusal (e.g. admin keys switched on): EventSource gives up; start over.
      source.close();
      setStatus("reconnecting");
      setTimeout(() => void start(), retryMs);
    } else {
      setStatus("reconnecting"); // EventSource retries by itself
    }
  });
}

/** @param {string} key */
async function streamWithKey(key) {
  for (;;) {
    /** @type {Record<string, string>} */
    const headers = { Authorization: `Bearer ${key}`, Accept: "text/event-stream" };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    try {
      const response = await fetch(EVENTS_URL, { headers, cache: "no-store" });
      if (response.status === 401 || response.status === 403) {
        sessionStorage.removeItem(KEY_STORAGE);
        askForKey("That key was not accepted.");
        return;
      }
      if (response.ok && response.body) await readEvents(response.body);
    } catch {
      // dropped or unreachable: retry below
    }
    setStatus("reconnecting");
    await sleep(retryMs);
  }
}

/** @param {ReadableStream<Uint8Array>} body */
async function readEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8");
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const event of parser.feed(decoder.decode(value, { stream: true }))) {
        if (parser.retry !== null) retryMs = parser.retry;
        lastEventId = event.lastEventId;
        if (event.type !== "stats") continue;
        setStatus("live");
        show(JSON.parse(event.data));
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** @param {string} message */
function askForKey(message) {
  setStatus("key");
  const form = /** @type {HTMLFormElement} */ ($("key-form"));
  const input = /** @type {HTMLInputElement} */ ($("admin-key"));
  $("key-error").textContent = message;
  form.hidden = false;
  input.focus();
  form.addEventListener(
    "submit",
    (event) => {
      event.preventDefault();
      const key = input.value.trim();
      input.value = "";
      form.hidden = true;
      sessionStorage.setItem(KEY_STORAGE, key);
      setStatus("connecting");
      void streamWithKey(key);
    },
    { once: true },
  );
}

// --- drawing -----------------------------------------------------------------

/** @param {number | null | undefined} seconds */
function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const millis = seconds * 1000;
  return millis < 10 ? `${millis.toFixed(1)} ms` : `${Math.round(millis)} ms`;
}

/** @param {number} value */
function rate(value) {
  return value < 10 ? value.toFixed(1) : String(Math.round(value));
}

/** @param {string} id @param {string} text */
function setText(id, text) {
  const element = $(id);
  if (element.textContent !== text) element.textContent = text;
}

/** @param {string} tag @param {string} text @param {string} [className] */
function cell(tag, text, className) {
  const element = document.createElement(tag);
  element.append(document.createTextNode(text));
  if (className) element.className = className;
  return element;
}

/** @param {string} id @param {Record<string, number>} counts */
function showCounts(id, counts) {
  const items = Object.entries(counts).map(([name, count]) => {
    const item = document.createElement("li");
    item.append(cell("span", name), cell("span", String(count)));
    return item;
  });
  $(id).replaceChildren(...(items.length ? items : [cell("li", "none", "none")]));
}

/**
 * @param {string} id
 * @param {(number | null)[]} values  one per second, oldest first
 * @param {(value: number) => string} label
 */
function drawChart(id, values, label) {
  const svg = $(id);
  const peak = Math.max(0, ...values.map((v) => v ?? 0));
  const top = peak > 0 ? peak : 1;
  const step = WIDTH / Math.max(values.length - 1, 1);
  const y = (/** @type {number} */ v) => (HEIGHT - 2 - (v / top) * (HEIGHT - 6)).toFixed(2);
  let line = "";
  let drawing = false;
  values.forEach((value, i) => {
    if (value === null) {
      drawing = false;
      return;
    }
    line += `${drawing ? "L" : "M"}${(i * step).toFixed(2)},${y(value)}`;
    drawing = true;
  });
  const axis = document.createElementNS(SVG_NS, "path");
  axis.setAttribute("class", "axis");
  axis.setAttribute("d", `M0,${HEIGHT - 1}H${WIDTH}`);
  const path = document.createElementNS(SVG_NS, "path");
  path.setAttribute("class", "line");
  if (line) path.setAttribute("d", line);
  svg.replaceChildren(axis, path);
  setText(`peak-${id.slice("chart-".length)}`, peak > 0 ? `peak ${label(peak)}` : "");
}

/** @param {any} stats one `stats` event's data */
function show(stats) {
  setText("in-flight", String(stats.in_flight));
  setText("tokens-1s", rate(stats.tokens_per_s_1s));
  setText("tokens-60s", rate(stats.tokens_per_s_60s));
  setText("requests-1s", rate(stats.requests_per_s_1s));
  setText("requests-60s", rate(stats.requests_per_s_60s));
  setText("ttft-p50", ms(stats.ttft_p50));
  setText("ttft-p99", ms(stats.ttft_p99));
  setText("tpot-p50", ms(stats.tpot_p50));
  setText("errors-60s", String(stats.errors_60s));
  setText("workers", String(stats.workers));

  const rows = stats.models.map((/** @type {any} */ model) => {
    const row = document.createElement("tr");
    row.dataset.model = model.model;
    row.append(
      cell("td", model.model),
      cell("td", String(model.replies)),
      cell("td", rate(model.tokens_per_s)),
      cell("td", ms(model.ttft_p50)),
      cell("td", String(model.errors)),
    );
    return row;
  });
  $("models").replaceChildren(...rows);
  showCounts("ends", stats.ends_by_reason);
  showCounts("error-types", stats.errors_by_type);

  drawChart("chart-tokens", stats.series.tokens_per_s, (v) => `${rate(v)}/s`);
  drawChart("chart-inflight", stats.series.in_flight, (v) => String(v));
  drawChart("chart-ttft", stats.series.ttft_p50, ms);
}

void start();
