// llmcore web chat: a client of the OpenAI-compatible API of the server that serves this page.
// Every turn sends the whole conversation to /v1/chat/completions with stream=true and renders
// the server-sent events as they arrive. Model and user text enter the page only as Text nodes
// (textContent), never as HTML, so a reply cannot inject markup or scripts.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  settings: $("settings"), model: $("model"), temperature: $("temperature"), maxTokens: $("max-tokens"),
  apiKey: $("api-key"), newChat: $("new-chat"), log: $("log"), status: $("status"),
  composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
};

const KEY_STORAGE = "llmcore.apiKey";  // sessionStorage: the key lives as long as the tab

let history = [];        // finished turns, [{role, content}], sent whole with every request
let controller = null;   // AbortController of the reply being streamed, null when idle
let conversation = 0;    // bumped by New chat, so a reply still in flight is not added to the new one

class StreamError extends Error {}

function authHeaders() {
  const key = ui.apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

// An OpenAI error body {"error": {message, type, param, code}} -> one readable line.
function errorText(body, httpStatus) {
  const err = body && body.error;
  if (!err) return httpStatus ? `HTTP ${httpStatus}` : "unknown error";
  if (typeof err === "string") return err;
  const details = [err.type, err.code, err.param ? `param: ${err.param}` : null].filter(Boolean);
  return (err.message || "unknown error") + (details.length ? ` (${details.join(", ")})` : "");
}

async function responseError(resp) {
  try {
    return errorText(await resp.json(), resp.status);
  } catch {
    return `HTTP ${resp.status} ${resp.statusText}`.trim();
  }
}

function updateButtons() {
  const busy = controller !== null;
  ui.send.disabled = busy || !ui.model.value;
  ui.stop.disabled = !busy;
}

async function loadModels() {
  setStatus("Loading models\u2026");
  try {
    const resp = await fetch("/v1/models", { headers: authHeaders() });
    if (!resp.ok) {
      ui.model.replaceChildren();
      setStatus(`Cannot list the models: ${await responseError(resp)}`, true);
    } else {
      const models = (await resp.json()).data || [];
      const previous = ui.model.value;
      ui.model.replaceChildren(...models.map((m) => new Option(m.id, m.id)));
      if (models.some((m) => m.id === previous)) ui.model.value = previous;
      setStatus(models.length ? "" : "The server lists no models.", models.length === 0);
    }
  } catch (err) {
    setStatus(`Cannot reach the server: ${err.message}`, true);
  }
  updateButtons();
}

// One message of the log: <li class="msg ROLE"><div class="role"/><div class="text"/><p class="note"/></li>.
function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = `msg ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "text";
  const content = document.createTextNode(text);
  body.append(content);
  const note = document.createElement("p");
  note.className = "note";
  item.append(label, body, note);
  ui.log.append(item);
  item.scrollIntoView({ block: "end" });
  return {
    item,
    text,
    append(delta) {  // appendData: no re-parse, no re-layout of the text so far
      this.text += delta;
      content.appendData(delta);
      const log = ui.log;
      if (log.scrollHeight - log.scrollTop - log.clientHeight < 80) log.scrollTop = log.scrollHeight;
    },
    setNote(message, isError = false) {
      note.textContent = message;
      note.classList.toggle("error", isError);
    },
  };
}

// Reads an SSE body of chat.completion.chunk events up to `data: [DONE]`, passing each piece of
// text to onText; returns the finish_reason. Throws StreamError for an error event or a stream
// that ends without [DONE].
async function readStream(body, onText) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new StreamError("the connection closed before the reply finished");
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split("\n");
    buffer = lines.pop();  // an incomplete last line waits for the next read
    for (const raw of lines) {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (!line.startsWith("data:")) continue;  // event separators, comments, other fields
      const data = line.slice(5).trim();
      if (data === "[DONE]") return finish;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new StreamError(errorText(chunk));
      for (const choice of chunk.choices || []) {  // the usage chunk has no choices
        if (choice.index !== 0) continue;
        if (choice.delta && choice.delta.content) onText(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
}

// An empty temperature or max-tokens field leaves the value to the server: the model's
// generation_config default, and the rest of the context.
function requestBody(messages) {
  const body = { model: ui.model.value, messages, stream: true };
  const temperature = ui.temperature.value.trim();
  if (temperature !== "") body.temperature = Number(temperature);
  const maxTokens = ui.maxTokens.value.trim();
  if (maxTokens !== "") body.max_tokens = Number(maxTokens);
  return body;
}

async function send(text) {
  const turn = conversation;
  const userMessage = { role: "user", content: text };
  const body = requestBody([...history, userMessage]);
  const user = addMessage("user", text);
  const reply = addMessage("assistant", "");
  reply.item.setAttribute("aria-busy", "true");
  controller = new AbortController();
  updateButtons();
  setStatus("");

  let finish = null;
  let error = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (resp.ok) finish = await readStream(resp.body, (delta) => reply.append(delta));
    else error = await responseError(resp);
  } catch (err) {
    if (err.name === "AbortError") finish = "abort";
    else if (err instanceof StreamError) error = err.message;
    else error = `Network error: ${err.message}`;
  }
  controller = null;
  updateButtons();
  reply.item.setAttribute("aria-busy", "false");
  reply.item.dataset.finish = error ? "error" : finish || "stop";

  if (error) {
    // The turn failed: it stays on screen but not in the history; its text goes back to the box.
    reply.setNote(`Error: ${error}`, true);
    user.setNote("Not sent to the model; edit and send it again.");
    if (turn === conversation && !ui.prompt.value) ui.prompt.value = text;
    return;
  }
  if (finish === "abort") reply.setNote("Stopped.");
  else if (finish === "length") reply.setNote("Reached the max-tokens limit.");
  // A stopped reply stays in the history as far as it got, as it reads on screen.
  if (turn === conversation) history.push(userMessage, { role: "assistant", content: reply.text });
}

function newChat() {
  if (controller) controller.abort();
  conversation += 1;
  history = [];
  ui.log.replaceChildren();
  setStatus("");
  ui.prompt.focus();
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value;
  if (controller || !text.trim() || !ui.model.value) return;
  ui.prompt.value = "";
  send(text);
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => controller && controller.abort());
ui.newChat.addEventListener("click", newChat);
ui.settings.addEventListener("submit", (event) => event.preventDefault());
ui.apiKey.addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, ui.apiKey.value.trim());
  loadModels();
});
ui.model.addEventListener("change", updateButtons);

ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
updateButtons();
loadModels();
