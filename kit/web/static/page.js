// Wires Deep Chat to the kit's stream route. Kept out of the HTML so the page's CSP can forbid inline script.
const config = JSON.parse(document.getElementById("kit-config").textContent);
const chat = document.getElementById("chat");
const STREAM_ROUTE = "chat-stream";

// Stop closes the stream's connection, but some proxies (jupyter-server-proxy, so every JupyterHub) keep
// reading the reply after the browser has gone, and the server would never learn of it. So each stream gets
// a random id, and when Deep Chat aborts it the page posts that id to the stop route: an ordinary request,
// which every proxy passes. A reply that was read to its end sends none.
function streamId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs https; this does not
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// A response passed on as it is, `done` called once its body has been read to the end (or at once without one):
// how the page's scripts learn that a reply is over (interrupts.js asks for the cards, branches.js for the ids).
// One pipe per response, however many scripts wait for it: each pipe is a hop between the stream and Deep Chat.
window.kitWhenRead = (response, done) => {
  if (!response.body) {
    done();
    return response;
  }
  if (response.kitWhenRead) {
    response.kitWhenRead.push(done);
    return response;
  }
  const waiting = [done];
  const body = response.body.pipeThrough(new TransformStream({ flush: () => waiting.forEach((call) => call()) }));
  const read = new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  read.kitWhenRead = waiting;
  return read;
};

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
  const state = { ended: false, stopId: id }; // ended: the whole reply was read, nothing left to stop
  const stopUrl = new URL(STREAM_ROUTE + "/stop", document.baseURI).href; // a resumed run stops the same way
  const stop = () => state.ended || navigator.sendBeacon(stopUrl, state.stopId);
  init.signal.addEventListener("abort", stop, { once: true });
  const rejoin = window.kitRun.takeRejoin(); // a page that opened on a running reply: stream that one
  if (rejoin) state.stopId = rejoin.run_id; // its Stop stops the run, whichever tab started it
  const request = rejoin
    ? openRejoin(headers, rejoin, init.signal)
    : plainFetch(input, { ...init, headers });
  return request.then((response) => resilient(response, headers, init.signal, state));
};

// A reply that survives the network. Each reply on a thread is a run on the server, which goes on when the
// connection drops (a reload, a network cut, a proxy restart): Deep Chat's own client never reconnects, so this
// stream does. It hands Deep Chat whole SSE events only, remembers the id of the last one, and when the
// connection breaks it rejoins the run from the next event (`POST chat-stream/rejoin`), into the same bubble.
const REJOIN_ROUTE = STREAM_ROUTE + "/rejoin";
const RETRY_FOR_MS = 60000;

window.kitRun = {
  pending: null, // {run_id}: the next send streams this run instead (set by threads.js on a running thread)
  rejoins: 0, // how many times a broken stream was rejoined (for tests)
  takeRejoin() {
    const pending = this.pending;
    this.pending = null;
    return pending;
  },
};

function openRejoin(headers, run, signal) {
  const sent = new Headers(headers);
  sent.set("Content-Type", "application/json");
  sent.set("Last-Event-ID", String(run.after || 0));
  const body = JSON.stringify({ run_id: run.run_id, after: run.after || 0 });
  return plainFetch(new URL(REJOIN_ROUTE, document.baseURI).href, { method: "POST", headers: sent, body, signal });
}

async function rejoinUntilBack(headers, run, signal) {
  const until = Date.now() + RETRY_FOR_MS;
  for (let wait = 250; Date.now() < until && !signal.aborted; wait = Math.min(wait * 2, 2000)) {
    try {
      const response = await openRejoin(headers, run, signal);
      if (response.ok && response.body) return response;
      if (response.status === 404 || response.status === 400) return null; // the run is gone
    } catch {
      // the network is still down (or the proxy still restarting): try again
    }
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
  return null;
}

function resilient(response, headers, signal, state) {
  const runId = response.headers.get("X-Kit-Run-Id");
  if (!response.body || !response.ok || !runId || !headers.get("X-Kit-Thread-Id")) {
    if (!response.body) state.ended = true;
    const body = response.body?.pipeThrough(new TransformStream({ flush: () => { state.ended = true; } }));
    return body ? new Response(body, { status: response.status, headers: response.headers }) : response;
  }
  state.stopId = runId; // a Stop reaches the run whichever stream (first or rejoined) is reading it
  const run = { run_id: runId, after: 0 };
  const events = new SseEvents((id) => { run.after = id; });
  const encoder = new TextEncoder();
  let reader = response.body.getReader();
  const reconnect = async () => {
    const again = await rejoinUntilBack(headers, run, signal);
    if (again) window.kitRun.rejoins += 1;
    return again ? again.body.getReader() : null;
  };
  const body = new ReadableStream({
    async pull(controller) {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (error) {
          reader = signal.aborted ? null : await reconnect();
          if (!reader) return controller.error(error);
          continue;
        }
        if (chunk.done) {
          // Closed without the run's end (a proxy restarting, a worker stopping): rejoin it.
          reader = events.ended ? null : await reconnect();
          if (reader) continue;
          state.ended = true;
          return controller.close();
        }
        const whole = events.take(chunk.value);
        if (whole) controller.enqueue(encoder.encode(whole));
        if (events.ended) {
          // The run is over (its transcript kept, its thread free): Deep Chat's stream ends now, not when the
          // connection closes a moment later, so the next message can be sent at once.
          state.ended = true;
          reader.cancel().catch(() => {});
          return controller.close();
        }
        if (whole) return;
      }
    },
    cancel: (reason) => reader?.cancel(reason),
  });
  return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
}

// Cuts SSE text into whole events (and lone comment lines, the heartbeats), noting each event's id. The kit's
// server ends lines with LF only; U+2028 and friends are text.
class SseEvents {
  constructor(onId) {
    this.decoder = new TextDecoder();
    this.tail = "";
    this.lines = [];
    this.onId = onId;
    this.ended = false;
  }

  take(bytes) {
    const parts = (this.tail + this.decoder.decode(bytes, { stream: true })).split("\n");
    this.tail = parts.pop();
    let out = "";
    for (const line of parts) {
      if (line === "") {
        if (!this.lines.length) continue;
        const id = this.lines.find((field) => field.startsWith("id:"));
        out += this.lines.join("\n") + "\n\n";
        this.lines = [];
        if (id) this.onId(Number(id.slice(3)));
      } else if (!this.lines.length && line === ": end") {
        this.ended = true; // the run is over: what follows is the connection closing
      } else if (!this.lines.length && line.startsWith(":")) {
        out += line + "\n"; // a heartbeat: passed on, and never dispatched by Deep Chat's parser
      } else {
        this.lines.push(line);
      }
    }
    return out;
  }
}

if (chat) {
  chat.connect = { url: STREAM_ROUTE, stream: true };
  // Without this Deep Chat sends only the newest message; 0 sends the whole visible history, which a
  // stateless server needs (follow-up questions, chains that condense the history).
  chat.requestBodyLimits = { maxMessages: 0 };
  chat.errorMessages = { displayServiceErrorMessages: true };
  chat.introMessage = { text: config.intro };
  chat.textInput = { placeholder: { text: "Type a message" } };
  // The attachment button takes what the server's `file_types` setting accepts (kit.pipeline.files reads them).
  if (config.files) {
    chat.mixedFiles = { files: { acceptedFormats: config.files.accept, maxNumberOfFiles: config.files.max } };
  }
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
  const arrived = (container) => {
    const name = role(container);
    const bubble = container.querySelector(".message-bubble");
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
  };
  new MutationObserver((records) => {
    for (const record of records) {
      for (const node of record.addedNodes) {
        if (!(node instanceof Element)) continue;
        // A live bubble arrives alone; restored ones (`history`: a reload, a switch of branch) arrive inside the
        // message list Deep Chat renders at once, so they are looked for below the added node too, in order.
        if (node.classList.contains("outer-message-container")) arrived(node);
        else node.querySelectorAll(".outer-message-container").forEach(arrived);
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
