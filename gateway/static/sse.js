// Server-Sent Events parsing, as the WHATWG HTML spec ("Parsing an event stream")
// describes it, for streams read with fetch() rather than EventSource (which can
// neither POST nor be aborted per request).
//
// - Lines end in CRLF, LF or CR; a CR at the end of one chunk and an LF at the start
//   of the next are one line ending, not two.
// - Lines starting with ":" are comments (keep-alive pings) and are ignored.
// - "data" lines accumulate, joined by LF; a blank line dispatches the event.
// - An event still pending when the stream ends is discarded, never dispatched.

/**
 * @typedef {object} SSEEvent
 * @property {string} type         "message" unless an `event:` field said otherwise
 * @property {string} data
 * @property {string} lastEventId
 */

const LINE_END = /\r\n|\r|\n/g;

/** Incremental parser: feed it decoded text in chunks of any size. */
export class SSEParser {
  #partialLine = "";
  #skipLeadingLF = false;
  #data = "";
  #eventType = "";
  #lastEventId = "";
  /** @type {number | null} reconnection time in ms, from a `retry:` field */
  retry = null;

  /**
   * Parse one chunk of text; return the events it completed, in order.
   * @param {string} text
   * @returns {SSEEvent[]}
   */
  feed(text) {
    /** @type {SSEEvent[]} */
    const events = [];
    if (text.length === 0) return events;
    let position = 0;
    if (this.#skipLeadingLF && text[0] === "\n") position = 1;
    this.#skipLeadingLF = false;

    LINE_END.lastIndex = position;
    for (let match = LINE_END.exec(text); match !== null; match = LINE_END.exec(text)) {
      const line = this.#partialLine + text.slice(position, match.index);
      this.#partialLine = "";
      position = match.index + match[0].length;
      if (match[0] === "\r" && position === text.length) this.#skipLeadingLF = true;
      this.#processLine(line, events);
    }
    this.#partialLine += text.slice(position);
    return events;
  }

  /**
   * @param {string} line
   * @param {SSEEvent[]} events
   */
  #processLine(line, events) {
    if (line === "") {
      this.#dispatch(events);
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);

    switch (field) {
      case "event":
        this.#eventType = value;
        break;
      case "data":
        this.#data += value + "\n";
        break;
      case "id":
        if (!value.includes("\0")) this.#lastEventId = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  /** @param {SSEEvent[]} events */
  #dispatch(events) {
    if (this.#data === "") {
      this.#eventType = "";
      return;
    }
    events.push({
      type: this.#eventType || "message",
      data: this.#data.endsWith("\n") ? this.#data.slice(0, -1) : this.#data,
      lastEventId: this.#lastEventId,
    });
    this.#data = "";
    this.#eventType = "";
  }
}

/**
 * Read a byte stream (a fetch Response body) as SSE events.
 * Network errors and aborts propagate from the reader; leaving the loop early
 * cancels the stream.
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<SSEEvent, void, undefined>}
 */
export async function* readSSE(body) {
  const reader = body.getReader();
  // The spec's decoder: UTF-8, a leading BOM dropped, bad bytes replaced.
  const decoder = new TextDecoder("utf-8");
  const parser = new SSEParser();
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      yield* parser.feed(decoder.decode(value, { stream: true }));
    }
    finished = true;
    yield* parser.feed(decoder.decode());
  } finally {
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
