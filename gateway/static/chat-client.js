// The gateway's OpenAI-compatible API as the page uses it: the model list and one
// streamed chat completion, turned into a few plain events. Every way a reply can
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
 * Stream one assistant reply.
 * @param {{model: string, messages: {role: string, content: string}[], signal: AbortSignal}} request
 * @returns {AsyncGenerator<ChatEvent, void, undefined>}
 */
export async function* streamChat({ model, messages, signal }) {
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
      }),
      signal,
    });
  } catch (error) {
    if (signal.aborted) throw error;
    throw new ChatError("Could not reach the gateway.");
  }
  if (!response.ok) {
    throw new ChatError(await errorMessage(response), { status: response.status });
  }
  if (response.body === null) throw new ChatError("The gateway sent an empty response.");

  let sawDone = false;
  try {
    for await (const event of readSSE(response.body)) {
      if (event.data === "[DONE]") {
        sawDone = true;
        break;
      }
      yield* chunkEvents(parseChunk(event.data));
    }
  } catch (error) {
    if (signal.aborted || error instanceof ChatError) throw error;
    throw new ChatError("The connection to the gateway was lost mid-reply.");
  }
  if (!sawDone) throw new ChatError("The reply stream ended before it was complete.");
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
