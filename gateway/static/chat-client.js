// The gateway's OpenAI-compatible API as the page uses it: the model list and one
// streamed chat completion (resumed across network drops), turned into a few plain
// events. Every way a reply can
// fail ends in a ChatError, so a stream that merely stops is never mistaken for a
// finished reply; a user's abort stays an AbortError.

import { readSSE } from "./sse.js";

/** A reply that failed: an HTTP error, an in-band error event, or a cut stream. */
export class ChatError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string | null}} [details]
   */
  constructor(message, details = {}) {
    super(message);
    this.name = "ChatError";
    this.status = details.status ?? null;
    this.code = details.code ?? null;
  }
}

/**
 * The ids of the models the gateway serves.
 * @returns {Promise<string[]>}
 */
export async function listModels() {
  const response = await fetch("/v1/models", { headers: { Accept: "application/json" } });
  if (!response.ok) throw new ChatError(await errorMessage(response), { status: response.status });
  const body = await response.json();
  return (body.data ?? []).map((/** @type {{id: string}} */ model) => model.id);
}

/**
 * @typedef {{type: "delta", text: string}
 *   | {type: "finish", reason: string}
 *   | {type: "usage", usage: {prompt_tokens: number, completion_tokens: number, total_tokens: number}}
 * } ChatEvent
 */

/**
 * A reply being streamed: what resuming it, or cancelling it, needs.
 * @typedef {{id: string | null, token: string | null, lastEventId: string}} ReplyHandle
 */

/** Reconnect delay after a lost connection (the gateway's `retry:` is the same). */
const RESUME_DELAY_MS = 1000;
/** Failed reconnects, while online, before the reply is given up. */
const MAX_RESUME_ATTEMPTS = 10;

/**
 * Stream one assistant reply. It is a background reply: a dropped connection is
 * resumed (GET with Last-Event-ID, once the browser is back online), so no token
 * is lost or repeated; the page cancels it explicitly (see cancelReply).
 * @param {{model: string, messages: {role: string, content: string}[], signal: AbortSignal,
 *   onReply?: (reply: ReplyHandle) => void}} request
 * @returns {AsyncGenerator<ChatEvent, void, undefined>}
 */
export async function* streamChat({ model, messages, signal, onReply }) {
  // A dropped network often leaves a connection hanging rather than failing: when
  // the browser says it went offline, this connection is given up and resumed.
  let connection = new AbortController();
  const dropConnection = () => connection.abort();
  window.addEventListener("offline", dropConnection);
  try {
    yield* streamReply({ model, messages, signal, onReply }, () => {
      connection = new AbortController();
      return AbortSignal.any([signal, connection.signal]);
    });
  } finally {
    window.removeEventListener("offline", dropConnection);
  }
}

/**
 * @param {{model: string, messages: {role: string, content: string}[], signal: AbortSignal,
 *   onReply?: (reply: ReplyHandle) => void}} request
 * @param {() => AbortSignal} connect the signal of a new connection
 * @returns {AsyncGenerator<ChatEvent, void, undefined>}
 */
async function* streamReply({ model, messages, signal, onReply }, connect) {
  let response;
  try {
    response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({
        model,
        messages,
        stream: true,
        stream_options: { include_usage: true },
        background: true,
      }),
      signal: connect(),
    });
  } catch (error) {
    if (signal.aborted) throw error;
    throw new ChatError("Could not reach the gateway.");
  }
  if (!response.ok) {
    throw new ChatError(await errorMessage(response), { status: response.status });
  }
  /** @type {ReplyHandle} */
  const reply = { id: null, token: response.headers.get("X-Resume-Token"), lastEventId: "0" };

  for (;;) {
    if (response.body === null) throw new ChatError("The gateway sent an empty response.");
    let lost = false;
    try {
      for await (const event of readSSE(response.body)) {
        if (event.lastEventId !== "") reply.lastEventId = event.lastEventId;
        if (event.data === "[DONE]") return;
        const chunk = parseChunk(event.data);
        if (reply.id === null && typeof chunk?.id === "string") {
          reply.id = chunk.id;
          onReply?.(reply);
        }
        yield* chunkEvents(chunk);
      }
    } catch (error) {
      if (signal.aborted || error instanceof ChatError) throw error;
      lost = true; // resumed below
    }
    if (reply.id === null || reply.token === null) {
      throw new ChatError(
        lost
          ? "The connection to the gateway was lost mid-reply."
          : "The reply stream ended before it was complete.",
      );
    }
    const resumed = await resumeReply(reply, signal, connect);
    if (resumed === null) return; // the reply ended, and nothing is left to read
    response = resumed;
  }
}

/**
 * Reconnect to a reply after its last event seen; null when nothing is left (204).
 * @param {ReplyHandle} reply
 * @param {AbortSignal} signal
 * @param {() => AbortSignal} connect
 * @returns {Promise<Response | null>}
 */
async function resumeReply(reply, signal, connect) {
  for (let attempt = 0; attempt < MAX_RESUME_ATTEMPTS; attempt += 1) {
    await online(signal);
    await sleep(RESUME_DELAY_MS, signal);
    try {
      const response = await fetch(`${replyUrl(reply)}?stream=true`, {
        headers: {
          Accept: "text/event-stream",
          "Last-Event-ID": reply.lastEventId,
          "X-Resume-Token": reply.token ?? "",
        },
        signal: connect(),
      });
      if (response.status === 204) return null;
      if (response.ok) return response;
      if (response.status === 404) throw new ChatError("The reply is no longer available.");
    } catch (error) {
      if (signal.aborted || error instanceof ChatError) throw error;
    }
  }
  throw new ChatError("The connection to the gateway was lost mid-reply.");
}

/**
 * Stop a reply on the gateway. With `beacon`, as the page goes away (sendBeacon
 * outlives the page; it can send no header, hence the token in the query).
 * @param {ReplyHandle} reply
 * @param {{beacon?: boolean}} [options]
 */
export function cancelReply(reply, { beacon = false } = {}) {
  if (reply.id === null || reply.token === null) return;
  const url = `${replyUrl(reply)}/cancel?token=${encodeURIComponent(reply.token)}`;
  if (beacon) {
    navigator.sendBeacon(url);
    return;
  }
  fetch(url, { method: "POST", keepalive: true }).catch(() => {});
}

/** @param {ReplyHandle} reply */
function replyUrl(reply) {
  return `/v1/chat/completions/${encodeURIComponent(reply.id ?? "")}`;
}

/** @param {AbortSignal} signal */
function online(signal) {
  if (navigator.onLine) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = () => {
      window.removeEventListener("online", done);
      signal.removeEventListener("abort", done);
      if (signal.aborted) reject(signal.reason);
      else resolve(undefined);
    };
    window.addEventListener("online", done);
    signal.addEventListener("abort", done);
  });
}

/**
 * @param {number} ms
 * @param {AbortSignal} signal
 */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", abort);
      resolve(undefined);
    }, ms);
    const abort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", abort, { once: true });
  });
}

/**
 * @param {string} data
 * @returns {any}
 */
function parseChunk(data) {
  let chunk;
  try {
    chunk = JSON.parse(data);
  } catch {
    throw new ChatError("The gateway sent an event that is not JSON.");
  }
  if (chunk !== null && typeof chunk === "object" && chunk.error) {
    const { message, code } = chunk.error;
    throw new ChatError(String(message || "The reply failed."), { code: code ?? null });
  }
  return chunk;
}

/**
 * @param {any} chunk
 * @returns {Generator<ChatEvent, void, undefined>}
 */
function* chunkEvents(chunk) {
  for (const choice of chunk?.choices ?? []) {
    const text = choice?.delta?.content;
    if (typeof text === "string" && text !== "") yield { type: "delta", text };
    if (choice?.finish_reason) yield { type: "finish", reason: String(choice.finish_reason) };
  }
  if (chunk?.usage) yield { type: "usage", usage: chunk.usage };
}

/**
 * The `error.message` of an OpenAI-style JSON error body, or the HTTP status.
 * @param {Response} response
 * @returns {Promise<string>}
 */
async function errorMessage(response) {
  const fallback = `The gateway answered HTTP ${response.status}.`;
  try {
    const body = await response.json();
    const message = body?.error?.message;
    return typeof message === "string" && message !== "" ? message : fallback;
  } catch {
    return fallback;
  }
}
