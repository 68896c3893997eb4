// The conversation's message elements. Text goes in as text nodes only.

import { renderReply } from "./format.js";

/**
 * @param {string} role  "user" or "assistant"
 * @returns {{article: HTMLElement, body: HTMLElement}}
 */
function messageShell(role) {
  const article = document.createElement("article");
  article.className = `message ${role}`;
  article.dataset.testid = `${role}-message`;
  const label = document.createElement("h2");
  label.className = "visually-hidden";
  label.textContent = role === "user" ? "You said:" : "Assistant said:";
  const body = document.createElement("div");
  body.className = "body";
  article.append(label, body);
  return { article, body };
}

/**
 * A user's message, shown exactly as typed.
 * @param {string} text
 * @returns {HTMLElement}
 */
export function userMessage(text) {
  const { article, body } = messageShell("user");
  body.textContent = text;
  return article;
}

/** An assistant reply that grows as tokens arrive, then ends in one of three ways. */
export class AssistantMessage {
  constructor() {
    const { article, body } = messageShell("assistant");
    this.element = article;
    this.body = body;
    this.caret = document.createElement("span");
    this.caret.className = "caret";
    this.caret.setAttribute("aria-hidden", "true");
    this.error = document.createElement("p");
    this.error.className = "error";
    this.error.setAttribute("role", "alert");
    this.error.hidden = true;
    this.meta = document.createElement("p");
    this.meta.className = "meta";
    this.meta.dataset.testid = "reply-meta";
    this.text = "";
    article.append(this.error, this.meta);
    article.setAttribute("aria-busy", "true");
    article.classList.add("streaming");
    this.#render();
  }

  /** @param {string} text */
  append(text) {
    this.text += text;
    this.#render();
  }

  /**
   * The line under the reply: timing figures, then an optional badge ("stopped").
   * @param {string[]} parts  joined with a middle dot
   * @param {string} [badge]
   */
  setMeta(parts, badge = "") {
    const nodes = [document.createTextNode(parts.filter(Boolean).join(" · "))];
    if (badge !== "") {
      const label = document.createElement("span");
      label.className = "badge";
      label.textContent = badge;
      nodes.push(label);
    }
    this.meta.replaceChildren(...nodes);
  }

  /**
   * Streaming is over: drop the caret; `state` is "done", "stopped" or "error".
   * @param {"done" | "stopped" | "error"} state
   */
  end(state) {
    this.element.classList.remove("streaming");
    this.element.dataset.state = state;
    this.element.removeAttribute("aria-busy");
    this.caret.remove();
  }

  /** @param {string} message */
  fail(message) {
    this.error.textContent = `Error: ${message}`;
    this.error.hidden = false;
    this.end("error");
  }

  #render() {
    const { fragment, tail } = renderReply(this.text);
    if (this.element.classList.contains("streaming")) (tail ?? fragment).append(this.caret);
    this.body.replaceChildren(fragment);
  }
}
