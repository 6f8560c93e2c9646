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
}
