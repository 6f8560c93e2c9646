// Wires Deep Chat to the kit's stream route. Kept out of the HTML so the page's CSP can forbid inline script.
const config = JSON.parse(document.getElementById("kit-config").textContent);
const chat = document.getElementById("chat");
if (chat) {
  chat.connect = { url: "chat-stream", stream: true };
  chat.errorMessages = { displayServiceErrorMessages: true };
  chat.introMessage = { text: config.intro };
  chat.textInput = { placeholder: { text: "Type a message" } };
}
