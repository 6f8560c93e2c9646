// Wires Deep Chat to the kit's stream route. Kept out of the HTML so the page's CSP can forbid inline script.
const config = JSON.parse(document.getElementById("kit-config").textContent);
const chat = document.getElementById("chat");
if (chat) {
  chat.connect = { url: "chat-stream", stream: true };
  // Without this Deep Chat sends only the newest message; 0 sends the whole visible history, which a
  // stateless server needs (follow-up questions, chains that condense the history).
  chat.requestBodyLimits = { maxMessages: 0 };
  chat.errorMessages = { displayServiceErrorMessages: true };
  chat.introMessage = { text: config.intro };
  chat.textInput = { placeholder: { text: "Type a message" } };
}
