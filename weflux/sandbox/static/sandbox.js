// The customer's phone of the sandbox (development only). No build step, no dependency.
// From the customer's view, the customer's own messages are "in" to the business (shown
// on the right) and the business's replies are "out" (on the left, with their ticks).
"use strict";

const TICKS = { accepted: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "⚠" };
const POLL_MS = 500;
// What POST /sandbox/media takes (checked here first, so the person hears why at once).
const IMAGE_TYPES = ["image/jpeg", "image/png", "image/webp"];
const MAX_IMAGE_BYTES = 5 * 1024 * 1024;
const REACTIONS = ["👍", "❤️", "😂", "😮", "🙏"];
const WHO = { customer: "the customer", business: "the business" };

let shown = ""; // the thread last rendered (JSON): unchanged, nothing is redrawn

function $(id) { return document.getElementById(id); }

function currentPhone() { return $("phone").value.trim(); }

function showError(message) { $("error").textContent = message || ""; }

function megabytes(bytes) { return `${(bytes / 1024 / 1024).toFixed(1)} MB`; }

async function refusal(response) {
  const answer = await response.json().catch(() => ({}));
  return (answer.error && answer.error.message) || `HTTP ${response.status}`;
}

async function loadContacts() {
  const response = await fetch("/sandbox/contacts", { cache: "no-store" });
  if (!response.ok) return;
  const { contacts } = await response.json();
  const select = $("contacts");
  const chosen = select.value;
  select.replaceChildren(new Option("new customer…", ""));
  for (const contact of contacts) {
    const label = contact.name ? `${contact.name} (${contact.phone})` : contact.phone;
    const option = new Option(label, contact.phone);
    option.dataset.name = contact.name;
    select.add(option);
  }
  select.value = chosen;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function mediaOf(message) {
  const media = message.media;
  const label = media.filename || media.mimeType || message.kind;
  if (!media.url) return element("span", "file", `📄 ${label}`);
  const image = element("img", "media");
  image.alt = media.filename || "image";
  image.src = media.url;
  image.addEventListener("error", () => {
    image.replaceWith(element("span", "file", `🖼 ${label} (no longer held by the sandbox)`));
  });
  return image;
}

function locationOf(location) {
  const where = `📍 ${location.latitude}, ${location.longitude}`;
  const named = [location.name, location.address].filter(Boolean).join(", ");
  return element("span", "location", named ? `${where} (${named})` : where);
}

function reactionsOf(message) {
  const bar = element("span", "reactions");
  for (const [who, emoji] of Object.entries(message.reactions || {})) {
    const badge = element("span", `reaction ${who}`, emoji);
    badge.title = `${WHO[who] || who} reacted ${emoji}`;
    bar.append(badge);
  }
  return bar;
}

function reactButtons(message) {
  const bar = element("span", "react");
  const mine = (message.reactions || {}).customer;
  for (const emoji of REACTIONS) {
    const button = element("button", emoji === mine ? "chosen" : "", emoji);
    button.type = "button";
    button.dataset.message = message.id;
    button.dataset.emoji = emoji === mine ? "" : emoji; // the chosen one again removes it
    button.title = emoji === mine ? "remove the reaction" : `react ${emoji}`;
    bar.append(button);
  }
  return bar;
}

function render(messages) {
  const json = JSON.stringify(messages);
  if (json === shown) return; // no redraw: images are not fetched again, clicks land
  shown = json;
  $("thread").replaceChildren(
    ...messages.map((message) => {
      const item = element("li", message.direction);
      item.dataset.id = message.id;
      item.dataset.status = message.status;
      item.dataset.kind = message.kind;
      if (message.media) item.append(mediaOf(message));
      if (message.location) item.append(locationOf(message.location));
      item.append(element("span", "text", message.text));
      if (message.direction === "out") {
        const ticks = element("span", `ticks ${message.status}`, TICKS[message.status] || message.status);
        ticks.title = message.error ? `${message.status} (error ${message.error})` : message.status;
        item.append(ticks);
      }
      item.append(reactionsOf(message));
      if (message.direction === "out") item.append(reactButtons(message));
      return item;
    }),
  );
}

async function poll() {
  const phone = currentPhone();
  try {
    if (phone) {
      const response = await fetch(`/sandbox/messages?phone=${encodeURIComponent(phone)}`, {
        cache: "no-store",
      });
      if (response.ok) render((await response.json()).messages);
    } else {
      render([]);
    }
  } catch (error) {
    showError(`The server does not answer: ${error}`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// The customer sends `content` (text, image, location or reaction); whether it went.
async function post(content) {
  if (!currentPhone()) {
    showError("Type the customer's phone number first (e.g. +15551230001).");
    return false;
  }
  const body = { phone: currentPhone(), name: $("name").value.trim(), ...content };
  try {
    const response = await fetch("/sandbox/messages", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      showError(`Not sent: ${await refusal(response)}`);
      return false;
    }
  } catch (error) {
    showError(`The server does not answer: ${error}`);
    return false;
  }
  showError("");
  await loadContacts().catch(() => {});
  return true;
}

async function send(event) {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  if (await post({ text })) $("text").value = "";
}

// As `weflux simulate message --image` does: the file goes to POST /sandbox/media, then
// the message names the media id it answered (the server builds the same webhook).
async function sendImage() {
  const input = $("image");
  const file = input.files[0];
  input.value = ""; // the same file can be picked again
  if (!file) return;
  if (!IMAGE_TYPES.includes(file.type)) {
    showError(`${file.name} is not a JPEG, PNG or WebP image (${file.type || "unknown type"}).`);
    return;
  }
  if (file.size > MAX_IMAGE_BYTES) {
    showError(`${file.name} is too large: ${megabytes(file.size)} (at most 5 MB).`);
    return;
  }
  if (!currentPhone()) {
    showError("Type the customer's phone number first (e.g. +15551230001).");
    return;
  }
  let held;
  try {
    const response = await fetch("/sandbox/media", {
      method: "POST",
      headers: { "Content-Type": file.type },
      body: file,
    });
    if (!response.ok) {
      showError(`The server refused ${file.name}: ${await refusal(response)}`);
      return;
    }
    held = await response.json();
  } catch (error) {
    showError(`The server does not answer: ${error}`);
    return;
  }
  const caption = $("text").value.trim();
  if (await post({ image: held.id, caption })) $("text").value = "";
}

async function sendLocation(event) {
  event.preventDefault();
  const location = $("location").value.trim();
  if (!location) return;
  if (await post({ location })) $("location").value = "";
}

async function react(event) {
  const button = event.target.closest("button[data-message]");
  if (!button) return;
  await post({ reaction: button.dataset.emoji, toMessage: button.dataset.message });
}

function pick() {
  const option = $("contacts").selectedOptions[0];
  $("phone").value = option.value;
  $("name").value = option.value ? option.dataset.name || "" : "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("composer").addEventListener("submit", send);
  $("image").addEventListener("change", sendImage);
  $("place").addEventListener("submit", sendLocation);
  $("thread").addEventListener("click", react);
  $("contacts").addEventListener("change", pick);
  loadContacts().catch(() => {}); // the poll says when the server does not answer
  poll();
});
