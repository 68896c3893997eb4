// The chat page: conversation state, the composer and the streaming loop.

import { ChatError, cancelReply, listModels, streamChat } from "./chat-client.js";
import { AssistantMessage, userMessage } from "./messages.js";

const DEFAULT_MODEL = "fake";

const elements = {
  conversation: /** @type {HTMLElement} */ (document.getElementById("conversation")),
  messages: /** @type {HTMLElement} */ (document.getElementById("messages")),
  empty: /** @type {HTMLElement} */ (document.getElementById("empty")),
  composer: /** @type {HTMLFormElement} */ (document.getElementById("composer")),
  prompt: /** @type {HTMLTextAreaElement} */ (document.getElementById("prompt")),
  send: /** @type {HTMLButtonElement} */ (document.getElementById("send")),
  stop: /** @type {HTMLButtonElement} */ (document.getElementById("stop")),
  model: /** @type {HTMLSelectElement} */ (document.getElementById("model")),
  newChat: /** @type {HTMLButtonElement} */ (document.getElementById("new-chat")),
};

/** @type {{role: "user" | "assistant", content: string}[]} */
let history = [];
/** @type {AbortController | null} */
let inFlight = null;
/** @type {import("./chat-client.js").ReplyHandle | null} the reply streaming now */
let currentReply = null;

function setStreaming(streaming) {
  elements.send.hidden = streaming;
  elements.stop.hidden = !streaming;
  document.body.classList.toggle("is-streaming", streaming);
}

function isNearBottom() {
  const { scrollTop, scrollHeight, clientHeight } = elements.conversation;
  return scrollHeight - scrollTop - clientHeight < 80;
}

/** Keep the newest text in view unless the reader has scrolled up to read. */
function keepScrolled(update) {
  const follow = isNearBottom();
  update();
  if (follow) elements.conversation.scrollTop = elements.conversation.scrollHeight;
}

function autosize() {
  const prompt = elements.prompt;
  prompt.style.height = "auto";
  prompt.style.height = `${Math.min(prompt.scrollHeight, 240)}px`;
}

/** @param {number} ms */
function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/** Times one reply: time to first token and the decode rate after it. */
class ReplyClock {
  constructor() {
    this.started = performance.now();
    /** @type {number | null} */
    this.firstToken = null;
    this.lastToken = 0;
    this.tokens = 0;
    /** @type {number | null} */
    this.completionTokens = null;
  }

  token() {
    const now = performance.now();
    this.firstToken ??= now;
    this.lastToken = now;
    this.tokens += 1;
  }

  describe() {
    if (this.firstToken === null) return ["waiting for the first token…"];
    const parts = [`${formatMs(this.firstToken - this.started)} to first token`];
    const span = (this.lastToken - this.firstToken) / 1000;
    if (this.tokens > 1 && span > 0) parts.push(`${((this.tokens - 1) / span).toFixed(1)} tokens/s`);
    const count = this.completionTokens ?? this.tokens;
    parts.push(`${count} token${count === 1 ? "" : "s"}`);
    return parts;
  }
}

/** @param {string} content */
async function send(content) {
  elements.empty.hidden = true;
  // "New chat" swaps in a fresh array, so a reply still ending lands in its own chat.
  const chat = history;
  chat.push({ role: "user", content });
  const reply = new AssistantMessage();
  elements.messages.append(userMessage(content), reply.element);
  elements.conversation.scrollTop = elements.conversation.scrollHeight;

  const controller = new AbortController();
  inFlight = controller;
  setStreaming(true);
  const clock = new ReplyClock();
  reply.setMeta(clock.describe());
  /** @type {string | null} */
  let finishReason = null;
  try {
    const events = streamChat({
      model: elements.model.value,
      messages: chat.slice(),
      signal: controller.signal,
      onReply: (handle) => {
        if (inFlight === controller) currentReply = handle;
      },
    });
    for await (const event of events) {
      if (event.type === "delta") {
        clock.token();
        keepScrolled(() => reply.append(event.text));
      } else if (event.type === "finish") {
        finishReason = event.reason;
      } else if (event.type === "usage") {
        clock.completionTokens = event.usage.completion_tokens ?? null;
      }
      reply.setMeta(clock.describe());
    }
    reply.end("done");
    reply.setMeta(clock.describe(), finishReason === "length" ? "cut at max tokens" : "");
    chat.push({ role: "assistant", content: reply.text });
  } catch (error) {
    if (controller.signal.aborted) {
      reply.end("stopped");
      reply.setMeta(clock.describe(), "stopped");
      if (reply.text !== "") chat.push({ role: "assistant", content: reply.text });
    } else {
      if (!(error instanceof ChatError)) console.error(error); // a bug: let it be seen
      const message = error instanceof ChatError ? error.message : "Something went wrong.";
      keepScrolled(() => reply.fail(message));
      reply.setMeta(clock.firstToken === null ? [] : clock.describe());
    }
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      currentReply = null;
      setStreaming(false);
      if (!elements.prompt.matches(":focus") && document.activeElement !== elements.model) {
        elements.prompt.focus();
      }
    }
  }
}

function submitPrompt() {
  const content = elements.prompt.value;
  if (inFlight !== null || content.trim() === "") return;
  elements.prompt.value = "";
  autosize();
  void send(content);
}

function stop() {
  // The reply runs in the background on the gateway: stop it there, then here.
  if (currentReply !== null) cancelReply(currentReply);
  currentReply = null;
  inFlight?.abort();
}

function newChat() {
  stop();
  inFlight = null;
  setStreaming(false);
  history = [];
  elements.messages.replaceChildren(elements.empty);
  elements.empty.hidden = false;
  elements.prompt.focus();
}

async function loadModels() {
  let ids;
  try {
    ids = await listModels();
  } catch {
    return; // keep the built-in default; sending will report what is wrong
  }
  if (ids.length === 0) return;
  const current = elements.model.value;
  elements.model.replaceChildren(
    ...ids.map((id) => {
      const option = document.createElement("option");
      option.value = id;
      option.textContent = id;
      return option;
    }),
  );
  elements.model.value = ids.includes(current) ? current : ids.includes(DEFAULT_MODEL) ? DEFAULT_MODEL : ids[0];
}

elements.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  submitPrompt();
});
elements.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submitPrompt();
  } else if (event.key === "Escape" && inFlight !== null) {
    event.preventDefault();
    stop();
  }
});
elements.prompt.addEventListener("input", autosize);
elements.stop.addEventListener("click", stop);
elements.newChat.addEventListener("click", newChat);
window.addEventListener("pagehide", () => {
  if (currentReply !== null) cancelReply(currentReply, { beacon: true });
});

void loadModels();
elements.prompt.focus();
