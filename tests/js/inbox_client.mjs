// A frontend's live inbox on graphql-ws's createClient, as docs/realtime.md tells it:
// driven by tests/gql/test_graphql_ws_client.py, one JSON command a line on stdin, one JSON
// event a line on stdout.
//
// Commands: {"cmd": "open", "name", "token", "refreshToken", "after", "fault",
// "retryErrors"} creates a client that subscribes to messageAdded (from `after`), through
// a WebSocket that commits `fault` if given (a protocol error graphql-ws itself never
// makes, see FAULTS), retrying errors too (not only closes) if `retryErrors`;
// {"cmd": "retry", "name"} lets its pending retry go ahead; {"cmd": "login", "name",
// "token", "refreshToken"} is the user logging in again; {"cmd": "dispose", "name"} (not
// while it waits to retry: graphql-ws would wait for that connection); {"cmd": "exit"}.
//
// On a close graphql-ws does not retry (the subscription errs with the close event), the
// script does what the docs say: after 4401 it refreshes the pair (POST /auth/refresh),
// and creates the client again with the new access token, resuming with `after` from the
// last message it received; if the refresh fails it asks for a login (event
// "login-needed") and does the same with the new pair.
import { createInterface } from "node:readline";
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const BASE = process.env.WEFLUX_URL;
const ADDED = `subscription($after: String) { messageAdded(after: $after) { id cursor text } }`;
const clients = new Map();

// A WebSocket that breaks the protocol one way, for the close codes graphql-ws would never
// provoke itself: no subprotocol (4406), a malformed frame (4400), an operation id used
// twice (4409), a second connection_init (4429), a frame over 64 KiB (1009), and one
// graphql-ws retries: no connection_init (4408). `send` gives the frames sent instead.
const FAULTS = {
  "no-subprotocol": { protocols: () => [] },
  malformed: { send: (frame) => (frame.type === "subscribe" ? ["[]"] : null) },
  "id-twice": { send: (frame, raw) => (frame.type === "subscribe" ? [raw, raw] : null) },
  "init-twice": { send: (frame, raw) => (frame.type === "connection_init" ? [raw, raw] : null) },
  oversize: { send: (frame, raw) => (frame.type === "subscribe" ? [raw.padEnd(65 * 1024)] : null) },
  "no-init": { send: (frame) => (frame.type === "connection_init" ? [] : null) },
};

function faulty(fault) {
  const { protocols = (given) => given, send = () => null } = FAULTS[fault];
  return class extends WebSocket {
    constructor(url, given) {
      super(url, protocols(given));
    }
    send(raw) {
      for (const data of send(JSON.parse(raw), raw) ?? [raw]) super.send(data);
    }
  };
}

function emit(name, event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ name, event, ...fields })}\n`);
}

function open(name, pair, after, fault, retryErrors) {
  const state = { pair, after, params: 0, retryGo: null, client: null };
  clients.set(name, state);
  const client = createClient({
    url: `${BASE.replace(/^http/, "ws")}/graphql`,
    webSocketImpl: fault ? faulty(fault) : WebSocket,
    ...(retryErrors ? { shouldRetry: () => true } : {}),
    // Called for every connection, each retry included: the token current then.
    connectionParams: () => {
      state.params += 1;
      emit(name, "params", { calls: state.params });
      return { authorization: `Bearer ${state.pair.token}` };
    },
    // graphql-ws calls this only when it has decided to retry: the test says when.
    retryWait: (retries) =>
      new Promise((resolve) => {
        state.retryGo = resolve;
        emit(name, "retry-wait", { retries });
      }),
    on: {
      connecting: (isRetry) => emit(name, "connecting", { isRetry }),
      connected: () => emit(name, "connected"),
      closed: (event) => emit(name, "closed", { code: event.code, reason: event.reason }),
    },
  });
  state.client = client;
  // graphql-ws sends this object again on each of its retries: `after` kept current in it,
  // a retry resumes after the last message received.
  const request = { query: ADDED, variables: { after: state.after } };
  client.subscribe(request, {
    next: ({ data, errors }) => {
      if (errors) return emit(name, "errors", { errors });
      const message = data.messageAdded;
      state.after = message.cursor;
      request.variables.after = message.cursor;
      emit(name, "message", { id: message.id, text: message.text, cursor: message.cursor });
    },
    // A close graphql-ws gives up on (a CloseEvent), or an error (a refused handshake).
    error: (error) => {
      const code = typeof error?.code === "number" ? error.code : null;
      emit(name, "error", { code, reason: error?.reason ?? error?.message ?? String(error) });
      if (code === 4401) reconnect(name, state);
    },
    complete: () => emit(name, "complete"),
  });
}

async function reconnect(name, state) {
  await state.client.dispose();
  const response = await fetch(`${BASE}/auth/refresh`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refreshToken: state.pair.refreshToken }),
  });
  emit(name, "refreshed", { status: response.status });
  if (response.ok) {
    const body = await response.json();
    open(name, { token: body.accessToken, refreshToken: body.refreshToken }, state.after);
  } else {
    emit(name, "login-needed");
  }
}

const commands = {
  open: ({ name, token, refreshToken, after, fault, retryErrors }) =>
    open(name, { token, refreshToken }, after ?? null, fault, retryErrors),
  retry: ({ name }) => {
    const state = clients.get(name);
    const go = state.retryGo;
    state.retryGo = null;
    go();
  },
  login: ({ name, token, refreshToken }) => {
    const state = clients.get(name);
    open(name, { token, refreshToken }, state.after);
  },
  dispose: async ({ name }) => {
    await clients.get(name).client.dispose();
    emit(name, "disposed");
  },
  exit: async () => {
    // A client waiting to retry would wait for its connection (never) before closing.
    const idle = [...clients.values()].filter((state) => !state.retryGo);
    await Promise.all(idle.map((state) => state.client.dispose()));
    process.exit(0);
  },
};

emit(null, "ready");
for await (const line of createInterface({ input: process.stdin })) {
  const command = JSON.parse(line);
  await commands[command.cmd](command);
}
