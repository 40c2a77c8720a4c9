// The customer's phone of the sandbox (development only). No build step, no dependency.
// From the customer's view, the customer's own messages are "in" to the business (shown
// on the right) and the business's replies are "out" (on the left, with their ticks).
"use strict";

const TICKS = { accepted: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "⚠" };
const POLL_MS = 500;

function $(id) { return document.getElementById(id); }

function currentPhone() { return $("phone").value.trim(); }

function showError(message) { $("error").textContent = message || ""; }

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

function render(messages) {
  const thread = $("thread");
  thread.replaceChildren(
    ...messages.map((message) => {
      const item = document.createElement("li");
      item.className = message.direction;
      item.dataset.id = message.id;
      item.dataset.status = message.status;
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = message.text;
      item.append(text);
      if (message.direction === "out") {
        const ticks = document.createElement("span");
        ticks.className = `ticks ${message.status}`;
        ticks.textContent = TICKS[message.status] || message.status;
        ticks.title = message.error ? `${message.status} (error ${message.error})` : message.status;
        item.append(ticks);
      }
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

async function send(event) {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  const body = { phone: currentPhone(), name: $("name").value.trim(), text };
  const response = await fetch("/sandbox/messages", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}));
    showError((answer.error && answer.error.message) || `HTTP ${response.status}`);
    return;
  }
  showError("");
  $("text").value = "";
  await loadContacts();
}

function pick() {
  const option = $("contacts").selectedOptions[0];
  $("phone").value = option.value;
  $("name").value = option.value ? option.dataset.name || "" : "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("composer").addEventListener("submit", send);
  $("contacts").addEventListener("change", pick);
  loadContacts();
  poll();
});
