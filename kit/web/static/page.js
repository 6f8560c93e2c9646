// Wires Deep Chat to the kit's stream route. Kept out of the HTML so the page's CSP can forbid inline script.
const config = JSON.parse(document.getElementById("kit-config").textContent);
const chat = document.getElementById("chat");
const STREAM_ROUTE = "chat-stream";
const ATTACHABLE = ".txt,.md,.markdown,.csv,.tsv,.json,.html,.htm,.xml,.yaml,.yml,.py,.js,.sh,.log,.pdf,image/*";

// Stop closes the stream's connection, but some proxies (jupyter-server-proxy, so every JupyterHub) keep
// reading the reply after the browser has gone, and the server would never learn of it. So each stream gets
// a random id, and when Deep Chat aborts it the page posts that id to the stop route: an ordinary request,
// which every proxy passes. A reply that was read to its end sends none.
function streamId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs https; this does not
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const plainFetch = window.fetch.bind(window);
window.fetch = (input, init = {}) => {
  const url = new URL(typeof input === "string" ? input : input.url, document.baseURI);
  const streamed = [STREAM_ROUTE, STREAM_ROUTE + "/resume"].some((route) => url.pathname.endsWith("/" + route));
  if (!streamed || !init.signal) {
    return plainFetch(input, init);
  }
  const id = streamId();
  const headers = new Headers(init.headers);
  headers.set("X-Kit-Stream-Id", id);
  let ended = false; // the whole reply was read: nothing left to stop
  const stopUrl = new URL(STREAM_ROUTE + "/stop", document.baseURI).href; // a resumed run stops the same way
  const stop = () => ended || navigator.sendBeacon(stopUrl, id);
  init.signal.addEventListener("abort", stop, { once: true });
  return plainFetch(input, { ...init, headers }).then((response) => {
    if (!response.body) {
      ended = true;
      return response;
    }
    const body = response.body.pipeThrough(new TransformStream({ flush: () => { ended = true; } }));
    const { status, statusText } = response;
    return new Response(body, { status, statusText, headers: response.headers });
  });
};

if (chat) {
  chat.connect = { url: STREAM_ROUTE, stream: true };
  // Without this Deep Chat sends only the newest message; 0 sends the whole visible history, which a
  // stateless server needs (follow-up questions, chains that condense the history).
  chat.requestBodyLimits = { maxMessages: 0 };
  chat.errorMessages = { displayServiceErrorMessages: true };
  chat.introMessage = { text: config.intro };
  chat.textInput = { placeholder: { text: "Type a message" } };
  // The attachment button: text-like files, PDFs and images (the server reads them: kit.pipeline.files).
  chat.mixedFiles = { files: { acceptedFormats: ATTACHABLE, maxNumberOfFiles: 10 } };
  // A reasoning model's thinking and an agent's tool steps come in bubbles of their own roles: muted, set
  // apart from the answer, and folded once the answer starts (a click opens them again).
  const aside = { backgroundColor: "#f3f1f7", color: "#4d4659", fontSize: "0.9em", borderLeft: "3px solid #b7a9d6" };
  chat.messageStyles = {
    default: {
      thinking: { bubble: { ...aside, fontStyle: "italic" } },
      steps: { bubble: { ...aside, fontFamily: "ui-monospace, monospace", borderLeftColor: "#9db3c8" } },
    },
  };
  foldAsides(chat);
  showUsage(chat);
}

// A reply's last event may carry its token usage, `{"usage": {"input_tokens", "output_tokens", "model"}}`, which
// Deep Chat itself ignores (no text: the bubble stays as it is). The page keeps it for scripts of its own (a
// `kit-usage` event on the element, `data-kit-usage` on the reply's bubble) and shows it as the bubble's tooltip.
function showUsage(element) {
  element.responseInterceptor = (response) => {
    const usage = response && response.usage;
    if (usage && typeof usage === "object") {
      element.dispatchEvent(new CustomEvent("kit-usage", { detail: usage }));
      const bubbles = element.shadowRoot ? element.shadowRoot.querySelectorAll(".ai-message-text") : [];
      const bubble = bubbles[bubbles.length - 1];
      if (bubble) {
        const counts = [["input_tokens", "in"], ["output_tokens", "out"]].filter(([key]) => key in usage);
        bubble.dataset.kitUsage = JSON.stringify(usage);
        bubble.title = counts.map(([key, label]) => `${usage[key]} tokens ${label}`).join(", ");
      }
    }
    return response;
  };
}

// What a folded bubble of each role says. Only classes and attributes are added: the model's words stay the
// text Deep Chat rendered (escaped, links neutralised by the server), never markup of the page's making.
const ASIDES = { thinking: "Thought", steps: "Tool steps" };

function foldAsides(element) {
  const root = element.shadowRoot;
  if (!root) return;
  const sheet = document.createElement("link");
  sheet.rel = "stylesheet";
  sheet.href = new URL("static/bubbles.css", document.baseURI).href;
  root.appendChild(sheet);
  const role = (container) =>
    Array.from(container.classList).find((name) => name.startsWith("deep-chat-outer-container-role-"))
      ?.slice("deep-chat-outer-container-role-".length);
  new MutationObserver((records) => {
    for (const record of records) {
      for (const node of record.addedNodes) {
        if (!(node instanceof Element) || !node.classList.contains("outer-message-container")) continue;
        const name = role(node);
        const bubble = node.querySelector(".message-bubble");
        if (name in ASIDES && bubble) {
          bubble.classList.add("kit-foldable");
          bubble.dataset.kitLabel = ASIDES[name];
          bubble.tabIndex = 0;
          bubble.setAttribute("role", "button");
          bubble.setAttribute("aria-expanded", "true");
        } else if (name === "ai" || name === "user") {
          // The answer (or a new question) begins: fold what came before it.
          root.querySelectorAll(".kit-foldable:not([data-kit-done])").forEach((aside) => setFolded(aside, true));
        }
      }
    }
  }).observe(root, { childList: true, subtree: true });
  const toggle = (event) => {
    if (!(event.target instanceof Element) || event.target.closest("a")) return; // a link is followed, not folded
    const aside = event.target.closest(".kit-foldable[data-kit-done]");
    if (aside) setFolded(aside, !aside.classList.contains("kit-folded"));
  };
  root.addEventListener("click", toggle);
  root.addEventListener("keydown", (event) => (event.key === "Enter" || event.key === " ") && toggle(event));
}

function setFolded(aside, folded) {
  aside.dataset.kitDone = "";
  aside.classList.toggle("kit-folded", folded);
  aside.setAttribute("aria-expanded", String(!folded));
}
