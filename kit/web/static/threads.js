// A thread per chat: an id with 128 random bits, kept in localStorage (a reload or a second tab finds it), sent
// with every chat request in X-Kit-Thread-Id; the thread's bubbles are loaded from the server when the page
// opens (the browser's storage holds only the id, never the only copy); "New chat" starts another thread.
const THREAD_HEADER = "X-Kit-Thread-Id";
const CHAT_ROUTES = ["/chat-stream", "/chat"];
// Several kits may share an origin (notebook servers behind one proxy): one thread per page path.
const STORAGE_KEY = "kit-thread:" + location.pathname;
const chat = document.getElementById("chat");

function newThreadId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs https; this does not
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function storedThreadId() {
  try {
    return localStorage.getItem(STORAGE_KEY);
  } catch {
    return null; // storage refused (a sandboxed iframe): the thread lasts as long as the page
  }
}

function keepThreadId(id) {
  try {
    localStorage.setItem(STORAGE_KEY, id);
  } catch {
    // as above
  }
}

let threadId = storedThreadId();
if (!threadId || !/^[A-Za-z0-9_-]{16,64}$/.test(threadId)) {
  threadId = newThreadId();
  keepThreadId(threadId);
}
// The server's messages carry, beside Deep Chat's own fields, an `id`, and `versions` and `feedback` where they
// have any: those stay with the page (branches.js puts its buttons by them), Deep Chat's `history` gets the rest.
const KIT_FIELDS = ["id", "versions", "feedback"];

function show(messages) {
  window.kitThread.branch = messages;
  chat.history = messages.map((message) =>
    Object.fromEntries(Object.entries(message).filter(([key]) => !KIT_FIELDS.includes(key))));
  chat.dispatchEvent(new CustomEvent("kit-branch", { detail: messages }));
}

// For tests and a page's own scripts; `show` puts a branch of the thread on screen (branches.js, on a switch).
window.kitThread = { id: () => threadId, branch: [], show, messages: () => threadMessages(threadId) };

const innerFetch = window.fetch;
window.fetch = (input, init = {}) => {
  const url = new URL(typeof input === "string" ? input : input.url, document.baseURI);
  if (!CHAT_ROUTES.some((route) => url.pathname.endsWith(route))) {
    return innerFetch(input, init);
  }
  const headers = new Headers(init.headers);
  headers.set(THREAD_HEADER, threadId);
  return innerFetch(input, { ...init, headers });
};

async function threadMessages(id) {
  const response = await innerFetch(`threads/${encodeURIComponent(id)}/messages`, { cache: "no-store" });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || `the thread could not be loaded (HTTP ${response.status})`);
  }
  return response.json();
}

// The thread's messages and its running reply, consistent: a reply that ended between the two requests is in the
// messages (the server keeps its transcript before it says the run is over), so it is shown, not rejoined.
async function openThread(id) {
  const running = await runningReply(id);
  const messages = await threadMessages(id);
  if (!running) return [messages, null];
  const still = await runningReply(id);
  if (still && still.run_id === running.run_id) return [messages, running];
  return [await threadMessages(id), null];
}

async function runningReply(id) {
  const response = await innerFetch(`threads/${encodeURIComponent(id)}/run`, { cache: "no-store" });
  const run = response.ok ? await response.json() : { running: false };
  return run.running ? run : null;
}

function rejoinWhenReady(run, asked) {
  window.kitRun.pending = { run_id: run.run_id, after: 0 };
  customElements.whenDefined("deep-chat").then(() => setTimeout(() => {
    window.kitThread.rejoined = run.run_id;
    chat.submitUserMessage({ text: asked });
  }, 0));
}

function startNewChat() {
  threadId = newThreadId();
  keepThreadId(threadId);
  window.kitThread.branch = [];
  chat.clearMessages(true); // back to the intro message, as a fresh page
  chat.dispatchEvent(new CustomEvent("kit-branch", { detail: [] }));
}

function addNewChatButton() {
  const button = document.createElement("button");
  button.id = "kit-new-chat";
  button.type = "button";
  button.textContent = "New chat";
  button.title = "Start a new conversation (this one stays on the server)";
  // Styled here (CSSOM, allowed by the page's CSP) so the page's stylesheet stays the kit's layout alone.
  Object.assign(button.style, {
    position: "fixed", top: "8px", right: "12px", zIndex: "10", padding: "4px 12px", cursor: "pointer",
    font: "inherit", fontSize: "14px", border: "1px solid #c8c8c8", borderRadius: "6px", background: "#fff",
  });
  button.addEventListener("click", startNewChat);
  document.body.appendChild(button);
}

if (chat) {
  // The thread's bubbles become Deep Chat's `history` (shown under the intro, in order). loadHistory would
  // put the intro message below them, as it loads pages of older messages above what is shown.
  openThread(threadId)
    .then(([messages, run]) => {
      // A reply still running (this page was reloaded mid-reply, or another tab is writing): its question is
      // sent again as a user bubble that streams the run, from its first event, into the same answer bubble.
      const asked = run ? run.asked.map((message) => message.text).join("\n") : "";
      const last = messages[messages.length - 1];
      if (run && last && last.role === "user" && last.text === asked) messages.pop(); // a graph's checkpoint has it
      if (messages.length) show(messages);
      window.kitThread.restored = messages.length;
      if (run) rejoinWhenReady(run, asked);
    })
    .catch((error) => {
      chat.history = [{ role: "ai", error: String(error.message || error) }];
      window.kitThread.restored = -1;
    });
  addNewChatButton();
}
