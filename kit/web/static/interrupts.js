// Approvals: when the thread's graph waits for a person (a LangGraph interrupt), a card per tool call with the
// decisions it allows (approve; edit the arguments; reject with a reason), or a question answered in the input
// box. The decision goes out as Deep Chat's next request, rewritten to POST chat-stream/resume, so the
// continuation streams into the chat like any reply (Stop included). Cards are read from
// GET threads/<id>/interrupts when the page opens and after every reply, so a reload or a second tab shows them.
// Everything in a card came from the model: it is set with textContent only, never as markup.
const RESUME_ROUTE = "chat-stream/resume";
const chat = document.getElementById("chat");
let pending = []; // the thread's interrupts, as the server described them
let queued = null; // the decision the next chat request carries
const decided = new Map(); // interrupt id -> decisions made so far (one per tool call)

const STYLE = `
#kit-interrupts { position: fixed; left: 50%; transform: translateX(-50%); bottom: 76px; z-index: 10;
  width: min(560px, calc(100% - 24px)); max-height: 60vh; overflow: auto; font: 14px system-ui, sans-serif; }
.kit-card { background: #fff; border: 1px solid #d0d7de; border-left: 4px solid #d4a72c; border-radius: 8px;
  padding: 10px 12px; margin-top: 8px; box-shadow: 0 2px 8px rgba(0,0,0,.12); }
.kit-card-title { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #7d5e00; }
.kit-card-tool { font: 600 15px ui-monospace, monospace; margin: 4px 0; overflow-wrap: anywhere; }
.kit-card-description, .kit-card-question { white-space: pre-wrap; color: #444; margin: 4px 0; overflow-wrap: anywhere; }
.kit-card-args { background: #f6f8fa; border-radius: 6px; padding: 6px 8px; margin: 6px 0; white-space: pre-wrap;
  font: 13px ui-monospace, monospace; overflow-wrap: anywhere; }
textarea.kit-card-args { width: 100%; box-sizing: border-box; min-height: 5em; border: 1px solid #888; }
.kit-card input { width: 100%; box-sizing: border-box; margin: 4px 0; padding: 4px 6px; font: inherit; }
.kit-card button { margin: 4px 6px 0 0; padding: 4px 14px; border-radius: 6px; border: 1px solid #c8c8c8;
  background: #fff; cursor: pointer; font: inherit; }
.kit-card button.kit-approve { background: #1f883d; border-color: #1f883d; color: #fff; }
.kit-card button.kit-reject { color: #cf222e; }
.kit-card button:disabled { opacity: .5; cursor: default; }
.kit-card-error { color: #cf222e; white-space: pre-wrap; }
.kit-card-done { color: #555; font-style: italic; }
.kit-field-label { display: block; margin: 6px 0 0; font-size: 13px; color: #333; overflow-wrap: anywhere; }
.kit-card .kit-field[type="checkbox"] { width: auto; margin-left: 8px; }
.kit-card select.kit-field { display: block; width: 100%; margin: 4px 0; padding: 4px 6px; font: inherit; }
`;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // never innerHTML: the text is the model's
  return node;
}

function button(label, className, onClick) {
  const node = element("button", className, label);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

function panel() {
  let node = document.getElementById("kit-interrupts");
  if (!node) {
    const style = element("style", "", STYLE);
    document.head.appendChild(style);
    node = element("div");
    node.id = "kit-interrupts";
    node.setAttribute("aria-live", "polite");
    document.body.appendChild(node);
  }
  return node;
}

function shown(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function disableCard(card) {
  card.querySelectorAll("button, input, textarea, select").forEach((node) => { node.disabled = true; });
}

// One tool call: its name, description and arguments, and a button per decision the request allows.
function toolCard(item, action, index) {
  const card = element("div", "kit-card");
  card.dataset.interrupt = item.id;
  card.dataset.action = String(index);
  card.append(element("div", "kit-card-title", "Approval needed"), element("div", "kit-card-tool", action.name));
  if (action.description) card.append(element("div", "kit-card-description", action.description));
  const args = element("pre", "kit-card-args", JSON.stringify(action.args, null, 2));
  const error = element("div", "kit-card-error");
  const buttons = element("div", "kit-card-buttons");
  card.append(args, error, buttons);
  const allowed = action.allowed_decisions || [];
  const decide = (decision, label) => {
    disableCard(card); // a double click sends one decision; the server refuses a second one anyway
    card.append(element("div", "kit-card-done", label));
    record(item, index, decision, label);
  };
  if (allowed.includes("approve")) {
    buttons.append(button("Approve", "kit-approve", () => decide({ type: "approve" }, "Approved")));
  }
  if (allowed.includes("edit")) buttons.append(button("Edit", "kit-edit", () => editArgs(card, action, decide)));
  if (allowed.includes("reject")) buttons.append(button("Reject", "kit-reject", () => askReason(card, decide)));
  if (allowed.includes("respond")) {
    buttons.append(button("Answer instead", "kit-respond", () => answerForTool(card, decide)));
  }
  return card;
}

function editArgs(card, action, decide) {
  const shownArgs = card.querySelector(".kit-card-args");
  const editor = element("textarea", "kit-card-args");
  editor.value = JSON.stringify(action.args, null, 2);
  shownArgs.replaceWith(editor);
  editor.focus();
  const buttons = card.querySelector(".kit-card-buttons");
  buttons.replaceChildren(button("Save and run", "kit-approve kit-save", () => {
    let args;
    try {
      args = JSON.parse(editor.value);
    } catch (error) {
      card.querySelector(".kit-card-error").textContent = `Not JSON: ${error.message}`;
      return;
    }
    if (!args || typeof args !== "object" || Array.isArray(args)) {
      card.querySelector(".kit-card-error").textContent = "The arguments are a JSON object: {...}";
      return;
    }
    decide({ type: "edit", edited_action: { name: action.name, args } }, "Edited and approved");
  }));
}

// A text box and a button in place of the card's buttons: a reason to reject (optional), or the answer a person
// gives in the tool's place ("respond": the tool does not run, the model reads the answer; required).
function askText(card, { inputClass, hint, label, buttonClass, required }, toDecision) {
  const input = element("input", inputClass);
  input.placeholder = hint;
  card.querySelector(".kit-card-buttons").replaceChildren(input, button(label, buttonClass, () => {
    const text = input.value.trim();
    if (required && !text) {
      card.querySelector(".kit-card-error").textContent = "Write the answer first.";
      return;
    }
    toDecision(text);
  }));
  input.focus();
}

function askReason(card, decide) {
  const options = { inputClass: "kit-reason", hint: "Why not? (optional, the model reads it)", label: "Reject" };
  askText(card, { ...options, buttonClass: "kit-reject kit-confirm-reject" }, (message) => {
    decide(message ? { type: "reject", message } : { type: "reject" }, message ? `Rejected: ${message}` : "Rejected");
  });
}

function answerForTool(card, decide) {
  const options = { inputClass: "kit-tool-answer", hint: "The tool's answer, as the model will read it" };
  askText(card, { ...options, label: "Send answer", buttonClass: "kit-approve kit-send-answer", required: true },
    (message) => decide({ type: "respond", message }, `Answered for the tool: ${message}`));
}

// A decision per tool call of the interrupt; when the last is made, the chat sends them.
function record(item, index, decision, label) {
  const made = decided.get(item.id) || [];
  made[index] = { decision, label };
  decided.set(item.id, made);
  if (made.filter(Boolean).length < item.actions.length) return;
  decided.delete(item.id);
  queued = { interrupt_id: item.id, decisions: made.map((entry) => entry.decision) };
  chat.submitUserMessage({ text: made.map((entry) => entry.label).join("; ") });
}

function questionCard(item) {
  const card = element("div", "kit-card");
  card.dataset.interrupt = item.id;
  card.append(element("div", "kit-card-title", "The assistant asks"));
  const value = item.value && typeof item.value === "object" && "question" in item.value ? item.value.question : item.value;
  card.append(element("div", "kit-card-question", shown(value)), element("div", "kit-card-error"));
  const schema = formSchema(item);
  if (schema) card.append(answerForm(item, schema, card));
  else card.append(element("div", "kit-card-done", "Answer in the box below."));
  return card;
}

// A question with a schema (LangGraph's response_schema, or a "schema" key in the value): an object's is a form,
// one field per property; a number, yes/no or choice is a form of one field. Plain text is typed in the box.
const ONE_FIELD = ["integer", "number", "boolean"];
function formSchema(item) {
  const schema = item.schema && typeof item.schema === "object" ? item.schema : null;
  if (!schema) return null;
  if (schema.properties && typeof schema.properties === "object") return schema;
  return ONE_FIELD.includes(schema.type) || Array.isArray(schema.enum) ? schema : null;
}

function field(name, rule) {
  let input;
  if (Array.isArray(rule.enum)) {
    input = element("select", "kit-field");
    rule.enum.forEach((option, index) => {
      const node = element("option", "", shown(option)); // an enum's values are the model's too: text only
      node.value = String(index);
      input.append(node);
    });
    input.kitValue = () => rule.enum[Number(input.value)];
  } else if (rule.type === "boolean") {
    input = element("input", "kit-field");
    input.type = "checkbox";
    input.kitValue = () => input.checked;
  } else {
    input = element("input", "kit-field");
    const numeric = rule.type === "number" || rule.type === "integer";
    input.type = numeric ? "number" : "text";
    if (rule.type === "integer") input.step = "1";
    input.kitValue = () => (input.value === "" ? undefined : numeric ? Number(input.value) : input.value);
  }
  input.name = name;
  const label = element("label", "kit-field-label", rule.title || name);
  label.append(input);
  return label;
}

function answerForm(item, schema, card) {
  const form = element("form", "kit-form");
  const single = !schema.properties; // one value, not an object
  const properties = single ? { answer: { ...schema, title: schema.title || "Answer" } } : schema.properties;
  const names = single ? ["answer"] : Array.isArray(item.fields) ? item.fields : Object.keys(properties);
  const inputs = names.map((name) => {
    const rule = properties[name];
    const label = field(name, rule && typeof rule === "object" ? rule : {});
    form.append(label);
    return [name, label.querySelector(".kit-field")];
  });
  const submit = element("button", "kit-approve kit-submit", "Submit");
  submit.type = "submit";
  form.append(submit);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const answer = {};
    for (const [name, input] of inputs) {
      const value = input.kitValue();
      if (value !== undefined) answer[name] = value; // left empty: the server names it if it is required
    }
    const value = single ? answer.answer : answer;
    if (value === undefined) {
      card.querySelector(".kit-card-error").textContent = "Fill in the answer first.";
      return;
    }
    disableCard(card);
    queued = { interrupt_id: item.id, answer: value };
    chat.submitUserMessage({ text: single ? shown(value) : JSON.stringify(value) });
  });
  return form;
}

function setPlaceholder(text) {
  const input = chat.shadowRoot && chat.shadowRoot.getElementById("text-input");
  if (!input) return;
  if (!input.dataset.kitPlaceholder) input.dataset.kitPlaceholder = input.getAttribute("deep-chat-placeholder-text") || "";
  input.setAttribute("deep-chat-placeholder-text", text || input.dataset.kitPlaceholder);
}

function render() {
  const node = panel();
  node.replaceChildren();
  for (const item of pending) {
    if (item.kind === "tool_calls") item.actions.forEach((action, index) => node.append(toolCard(item, action, index)));
    else node.append(questionCard(item));
  }
  const question = pending.find((item) => item.kind === "question");
  if (question && formSchema(question)) setPlaceholder("Fill in the form above and press Submit");
  else if (question) setPlaceholder("Type your answer to the question above");
  else if (pending.some(rejectable)) setPlaceholder("Waiting for your decision on the card above (a message here rejects it)");
  else if (pending.length) setPlaceholder("Waiting for your decision on the card above");
  else setPlaceholder(null);
  window.kitInterrupts.shown = pending.length;
}

async function refresh() {
  const id = window.kitThread && window.kitThread.id();
  if (!id) return;
  try {
    const response = await plainFetch(`threads/${encodeURIComponent(id)}/interrupts`, { cache: "no-store" });
    pending = response.ok ? await response.json() : [];
  } catch {
    pending = [];
  }
  decided.clear();
  render();
}

function rejectable(item) {
  return item.kind === "tool_calls" && item.actions.every((action) => action.allowed_decisions.includes("reject"));
}

// The request's body for the resume route: a queued card decision, the answer to a question, or a typed
// message that rejects the pending tool call(s) with itself as the reason.
function resumeBody(init) {
  if (queued) return queued;
  const question = pending.find((item) => item.kind === "question");
  const messages = JSON.parse(init.body || "{}").messages || [];
  const text = messages.length ? messages[messages.length - 1].text : "";
  if (question) return { interrupt_id: question.id, answer: text };
  const item = pending.find(rejectable);
  return item ? { interrupt_id: item.id, decisions: item.actions.map(() => ({ type: "reject", message: text })) } : null;
}

const UNDECIDED = "Decide on the card above first: this call cannot be rejected with a message.";

function jsonError(status, error) {
  return new Response(JSON.stringify({ error }), { status, headers: { "Content-Type": "application/json" } });
}

function afterReply(response) {
  return window.kitWhenRead(response, refresh);
}

const plainFetch = window.fetch;
window.fetch = (input, init = {}) => {
  const url = new URL(typeof input === "string" ? input : input.url, document.baseURI);
  if (!url.pathname.endsWith("/chat-stream")) return plainFetch(input, init);
  const body = pending.length || queued ? resumeBody(init) : null;
  queued = null;
  // A new message while a call that cannot be rejected waits would start a new run past it (LangGraph drops the
  // interrupt and leaves a tool call unanswered, which most chat APIs then refuse): the card must be decided first.
  if (!body && pending.length) return Promise.resolve(jsonError(409, UNDECIDED));
  if (!body) return plainFetch(input, init).then(afterReply);
  pending = [];
  render(); // the cards go at once: the decision is on its way
  const headers = new Headers(init.headers);
  headers.set("X-Kit-Thread-Id", window.kitThread.id());
  headers.set("Content-Type", "application/json");
  const resumeUrl = new URL(RESUME_ROUTE, document.baseURI).href;
  return plainFetch(resumeUrl, { ...init, headers, body: JSON.stringify(body) }).then(afterReply);
};

window.kitInterrupts = { refresh, pending: () => pending, shown: 0 };
if (chat) {
  // The input box exists once Deep Chat has rendered; the thread's id once threads.js ran (it ran before this).
  customElements.whenDefined("deep-chat").then(() => setTimeout(refresh, 0));
  // "New chat" (threads.js) switches thread: its own handler runs first, then the new thread's cards show.
  document.addEventListener("click", (event) => { if (event.target.id === "kit-new-chat") refresh(); });
}
