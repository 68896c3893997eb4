// Light formatting for assistant replies, built only from DOM nodes and text nodes:
// model output is never parsed as HTML. Blank lines split paragraphs; ``` fences
// become <pre><code>. A fence still open (the reply is mid-stream) renders as code
// so far, which is what it will become.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;

/**
 * @typedef {{kind: "paragraph", text: string}
 *   | {kind: "code", language: string, text: string}} Block
 */

/**
 * Split reply text into paragraphs and fenced code blocks.
 * @param {string} text
 * @returns {Block[]}
 */
export function parseBlocks(text) {
  /** @type {Block[]} */
  const blocks = [];
  /** @type {string[]} */
  let lines = [];
  /** @type {{marker: string, language: string} | null} */
  let fence = null;

  const flushParagraph = () => {
    if (lines.length > 0) blocks.push({ kind: "paragraph", text: lines.join("\n") });
    lines = [];
  };

  for (const line of text.split(/\r\n|\r|\n/)) {
    if (fence !== null) {
      if (line.trim().startsWith(fence.marker) && line.trim().replace(/[`~]/g, "") === "") {
        blocks.push({ kind: "code", language: fence.language, text: lines.join("\n") });
        lines = [];
        fence = null;
      } else {
        lines.push(line);
      }
      continue;
    }
    const opening = FENCE.exec(line);
    if (opening !== null) {
      flushParagraph();
      fence = { marker: opening[1], language: opening[2] };
    } else if (line.trim() === "") {
      flushParagraph();
    } else {
      lines.push(line);
    }
  }
  if (fence !== null) {
    blocks.push({ kind: "code", language: fence.language, text: lines.join("\n") });
  } else {
    flushParagraph();
  }
  return blocks;
}

/**
 * Render reply text as DOM nodes.
 * Returns the nodes and the innermost element of the last block, where a streaming
 * caret belongs (null when there is no block yet).
 * @param {string} text
 * @returns {{fragment: DocumentFragment, tail: HTMLElement | null}}
 */
export function renderReply(text) {
  const fragment = document.createDocumentFragment();
  /** @type {HTMLElement | null} */
  let tail = null;
  for (const block of parseBlocks(text)) {
    if (block.kind === "paragraph") {
      const paragraph = document.createElement("p");
      paragraph.append(document.createTextNode(block.text));
      fragment.append(paragraph);
      tail = paragraph;
    } else {
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (block.language) {
        pre.dataset.language = block.language;
        code.className = `language-${block.language.replace(/[^\w+#.-]/g, "")}`;
      }
      code.append(document.createTextNode(block.text));
      pre.append(code);
      fragment.append(pre);
      tail = code;
    }
  }
  return { fragment, tail };
}
