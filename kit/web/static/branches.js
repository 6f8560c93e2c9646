// Branches of a thread: Edit on the user's bubbles, Regenerate on the last answer, a "‹ 2 / 3 ›" switcher on a
// bubble that has other versions, and thumbs up/down with an optional comment on every answer. Deep Chat has no
// such buttons: they are added inside its shadow root, under the bubbles, and every message they act on is named by
// the id the server gave it (GET threads/<id>/messages), so a reload, a second tab or another worker agree.
// Edit and Regenerate go out as Deep Chat's own next request (the bubbles before the branch point, then the
// question), with the body's `kit` field naming the message, so the answer streams into a bubble as any reply.
// Everything shown here that a person or the model wrote is set with textContent only, never as markup.
const chat = document.getElementById("chat");
const CHAT_ROUTES = ["/chat-stream", "/chat"];
let asked = null; // the branch field the next chat request carries: {edit: id} or {regenerate: id}
let running = false; // a reply is being written: the buttons wait
let problem = ""; // what the last action could not do (shown under the last bubble)

window.kitBranches = { refreshed: 0, problem: () => problem };

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // never innerHTML: the text is a person's or the model's
  return node;
}

function button(label, className, title, onClick) {
  const node = element("button", className, label);
  node.type = "button";
  node.title = title;
  node.setAttribute("aria-label", title);
  node.disabled = running;
  node.addEventListener("click", onClick);
  return node;
}

function threadUrl(path) {
  return `threads/${encodeURIComponent(window.kitThread.id())}/${path}`;
}

async function call(method, path, body) {
  const init = { method, cache: "no-store", headers: { "Content-Type": "application/json" } };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(threadUrl(path), init);
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function branch() {
  return window.kitThread.branch || [];
}

// Deep Chat's bubbles of the branch's messages, in order: one per message with text (a message's files come in
// bubbles of their own, which carry no buttons); the intro and error bubbles are not the thread's.
function textBubbles() {
  const root = chat.shadowRoot;
  if (!root) return [];
  return Array.from(root.querySelectorAll(".outer-message-container:not(.deep-chat-intro)")).filter((container) =>
    container.querySelector(".message-bubble.text-message:not(.error-message-text)"));
}

// Where the reply a message belongs to starts: the message after the user message before it.
function replyStart(messages, index) {
  let start = index;
  while (start > 0 && messages[start - 1].role !== "user") start -= 1;
  return start;
}

function decorate() {
  const messages = branch().filter((message) => message.text);
  const bubbles = textBubbles();
  if (bubbles.length !== messages.length) return false;
  if (messages.some((message) => !message.id)) return true; // a server that keeps no ids: nothing to address
  const all = branch();
  const lastAnswer = all.length && all[all.length - 1].role === "ai" ? all.length - 1 : -1;
  const shownWith = versionsShown(all);
  bubbles.forEach((container, index) => {
    const message = messages[index];
    container.querySelector(":scope > .kit-controls")?.remove();
    const controls = element("div", "kit-controls");
    controls.dataset.kitId = message.id;
    if (shownWith.has(message)) controls.append(switcher(shownWith.get(message)));
    if (message.role === "user") controls.append(button("Edit", "kit-edit-message", "Edit this message", () => edit(container, message)));
    if (message.role === "ai") controls.append(...feedback(controls, message));
    if (all.indexOf(message) === lastAnswer) {
      const start = all[replyStart(all, lastAnswer)];
      controls.append(button("\u21bb", "kit-regenerate", "Regenerate this answer", () => regenerate(start)));
    }
    container.dataset.kitId = message.id;
    container.append(controls);
  });
  const last = bubbles[bubbles.length - 1];
  if (problem && last) last.querySelector(".kit-controls").append(element("div", "kit-problem", problem));
  return true;
}

// Which bubble shows each switcher: a user message its own; a reply's versions sit on its first message (the
// steps, when it begins with them), and are shown under the reply's answer, where a reader looks for them.
function versionsShown(all) {
  const shown = new Map();
  all.forEach((message, index) => {
    if (!message.versions || !message.text) return;
    let at = index;
    if (message.role !== "user" && message.role !== "ai") {
      const answer = all.findIndex((other, later) => later > index && other.role === "ai" && other.text);
      const nextQuestion = all.findIndex((other, later) => later > index && other.role === "user");
      if (answer > 0 && (nextQuestion < 0 || answer < nextQuestion)) at = answer;
    }
    shown.set(all[at], message.versions);
  });
  return shown;
}

function switcher(versions) {
  const box = element("span", "kit-versions");
  const previous = button("\u2039", "kit-previous", "Previous version", () => switchTo(versions.ids[versions.index - 2]));
  const next = button("\u203a", "kit-next", "Next version", () => switchTo(versions.ids[versions.index]));
  previous.disabled ||= versions.index <= 1;
  next.disabled ||= versions.index >= versions.count;
  box.append(previous, element("span", "kit-version", `${versions.index} / ${versions.count}`), next);
  return box;
}

async function switchTo(messageId) {
  await act(async () => show(await call("POST", "switch", { message_id: messageId })));
}

// An action on the server; what it could not do is shown under the last bubble (the branch is unchanged).
async function act(work) {
  problem = "";
  try {
    await work();
  } catch (error) {
    problem = String(error.message || error);
    decorate();
  }
}

// Puts a branch on screen (threads.js renders it as Deep Chat's history), then, once Deep Chat has drawn it,
// resolves; the buttons come with it.
function show(messages) {
  const old = firstBubble();
  window.kitThread.show(messages);
  return drawn(messages, old);
}

function firstBubble() {
  return chat.shadowRoot ? chat.shadowRoot.querySelector(".outer-message-container") : null;
}

// Deep Chat draws a new `history` a moment later, all bubbles anew (the intro too): drawn when the bubbles that
// were there are gone and the branch's are all there.
function drawn(messages, old) {
  const count = messages.filter((message) => message.text).length;
  return new Promise((resolve) => {
    const until = performance.now() + 5000;
    const look = () => {
      if ((!old || !old.isConnected) && textBubbles().length === count) resolve();
      else if (performance.now() > until) resolve();
      else requestAnimationFrame(look);
    };
    look();
  });
}

// The bubbles before the branch point, then `text` as the new question, sent through Deep Chat (Stop, rejoin and
// the answer's bubble as for any turn) with the branch field the server reads.
async function resend(before, text, field) {
  if (window.kitInterrupts && window.kitInterrupts.pending().length) {
    // The next request would answer the card (interrupts.js sends it to the resume route), not branch.
    problem = "Decide on the card above first: the thread waits for that decision.";
    decorate();
    return;
  }
  await show(before);
  asked = field;
  chat.submitUserMessage({ text });
}

function edit(container, message) {
  if (container.classList.contains("kit-editing")) return;
  container.classList.add("kit-editing");
  const editor = element("div", "kit-editor");
  const box = element("textarea", "kit-edit-text");
  box.value = message.text;
  box.setAttribute("aria-label", "Edited message");
  const done = () => {
    container.classList.remove("kit-editing");
    editor.remove();
  };
  const send = () => {
    const text = box.value.trim();
    if (!text) return;
    done();
    const all = branch();
    resend(all.slice(0, all.indexOf(message)), text, { edit: message.id });
  };
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      send();
    } else if (event.key === "Escape") done();
  });
  editor.append(box, button("Send", "kit-edit-send", "Send the edited message", send),
    button("Cancel", "kit-edit-cancel", "Keep the message as it is", done));
  container.insertBefore(editor, container.querySelector(":scope > .kit-controls"));
  box.focus();
}

function regenerate(start) {
  const all = branch();
  const at = all.indexOf(start);
  const question = all[at - 1];
  if (!question || question.role !== "user") return;
  resend(all.slice(0, at - 1), question.text, { regenerate: start.id });
}

// Drawn, not an emoji (a machine without an emoji font shows a box). Feather icons' thumbs (MIT).
const THUMBS = {
  up: "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3",
  down: "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17",
};

function icon(path) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "path");
  line.setAttribute("d", path);
  svg.append(line);
  return svg;
}

// Thumbs up and down (a second click on the chosen one removes the vote), and a comment once there is a vote.
function feedback(controls, message) {
  const vote = message.feedback ? message.feedback.vote : null;
  const thumb = (kind, title) => {
    const node = button("", `kit-vote kit-vote-${kind}`, title, () => setVote(message, kind === vote ? null : kind, undefined));
    node.append(icon(THUMBS[kind]));
    node.setAttribute("aria-pressed", String(kind === vote));
    return node;
  };
  const parts = [thumb("up", "Good answer"), thumb("down", "Poor answer")];
  if (vote) {
    const comment = message.feedback.comment || "";
    if (comment) parts.push(element("span", "kit-comment", comment));
    parts.push(button(comment ? "Edit comment" : "Comment", "kit-comment-open", "Say why (optional)",
      () => openComment(controls, message)));
  }
  return parts;
}

function openComment(controls, message) {
  if (controls.querySelector(".kit-comment-form")) return;
  const form = element("div", "kit-comment-form");
  const input = element("input", "kit-comment-text");
  input.value = message.feedback.comment || "";
  input.placeholder = "What was good or wrong? (optional)";
  input.maxLength = 4000;
  input.setAttribute("aria-label", "Comment on this answer");
  const save = () => setVote(message, message.feedback.vote, input.value.trim());
  input.addEventListener("keydown", (event) => event.key === "Enter" && save());
  form.append(input, button("Save", "kit-comment-save", "Save the comment", save));
  controls.append(form);
  input.focus();
}

async function setVote(message, vote, comment) {
  await act(async () => {
    const path = `messages/${encodeURIComponent(message.id)}/feedback`;
    if (vote) {
      const body = { vote, comment: comment ?? (message.feedback ? message.feedback.comment || "" : "") };
      message.feedback = await call("PUT", path, body);
    } else {
      await call("DELETE", path);
      delete message.feedback;
    }
    decorate();
  });
}

// After each reply: the branch as the server now has it (the new messages' ids and versions). When the bubbles
// on screen are not that branch's after an edit or a regeneration (files the question had, sent as text only),
// the branch is redrawn; after any other reply the page keeps what it shows (a decision on an approval card is a
// bubble the server keeps no message for; a chat without a thread store keeps none), its older buttons with it.
async function refresh(branched) {
  running = false;
  try {
    window.kitThread.branch = await window.kitThread.messages();
  } catch {
    return;
  }
  const kept = window.kitThread.branch;
  if (!decorate() && branched && kept.length && kept.every((message) => message.id)) await show(kept);
  window.kitBranches.refreshed += 1;
}

const innerFetch = window.fetch;
window.fetch = (input, init = {}) => {
  const url = new URL(typeof input === "string" ? input : input.url, document.baseURI);
  if (!CHAT_ROUTES.some((route) => url.pathname.endsWith(route))) return innerFetch(input, init);
  running = true;
  problem = "";
  chat.shadowRoot?.querySelectorAll(".kit-controls button").forEach((node) => { node.disabled = true; });
  const field = asked;
  asked = null;
  if (field && typeof init.body === "string") {
    init = { ...init, body: JSON.stringify({ ...JSON.parse(init.body), kit: field }) };
  }
  return innerFetch(input, init).then((response) => window.kitWhenRead(response, () => refresh(field)), (error) => {
    refresh(field);
    throw error;
  });
};

if (chat) {
  // threads.js shows a branch (the page opening, "New chat") and says so at once, before Deep Chat draws it;
  // its buttons come once it is drawn.
  chat.addEventListener("kit-branch", (event) => {
    problem = "";
    const old = event.detail.length ? firstBubble() : null; // "New chat" clears the bubbles in place
    drawn(event.detail, old).then(() => {
      decorate();
      window.kitBranches.refreshed += 1;
    });
  });
  if (branch().length) drawn(branch(), null).then(decorate); // shown before this script ran
}
