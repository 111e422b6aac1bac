// An independent A2A 1.0 client (@a2a-js/sdk) driven by tests/a2a/test_js_client.py.
//
//   A2A_BASE_URL=http://127.0.0.1:PORT A2A_TOKEN=... [A2A_SPEC='{...}'] node client.mjs STEP
//
// STEP is one of:
//   card      discover the agent card from the base URL (no token: the card is public) and build
//             a client from it
//   send-get  SendMessage with A2A_SPEC as a data part, returnImmediately; GetTask of the answer;
//             then the same SendMessage blocking (returnImmediately false)
//   stream    SendStreamingMessage with A2A_SPEC as a data part; one line per event as it arrives
//   no-token  GetTask and SendMessage with no bearer token
//
// Every observation is one JSON object on its own stdout line, {"kind": ..., ...}; SDK objects are
// printed in their A2A 1.0 JSON form (the SDK's own toJSON). A failure prints {"kind": "error"}
// and exits 1. Nothing else is written to stdout.

import {
  AgentCard,
  SendMessageRequest,
  StreamResponse,
  Task,
} from "@a2a-js/sdk";
import {
  ClientFactory,
  ClientFactoryOptions,
  DefaultAgentCardResolver,
  JsonRpcTransportFactory,
  createAuthenticatingFetchWithRetry,
} from "@a2a-js/sdk/client";

const baseUrl = process.env.A2A_BASE_URL ?? process.argv[3];
const token = process.env.A2A_TOKEN ?? "";
const step = process.argv[2];
const spec = JSON.parse(process.env.A2A_SPEC ?? "{}");

function emit(kind, fields = {}) {
  process.stdout.write(`${JSON.stringify({ kind, ...fields })}\n`);
}

/** fetch with `Authorization: Bearer <token>` on every request (the SDK's auth hook). */
function bearerFetch(bearer) {
  return createAuthenticatingFetchWithRetry(fetch, {
    headers: async () => ({ Authorization: `Bearer ${bearer}` }),
    shouldRetryWithHeaders: async () => undefined,
  });
}

/** fetch that records the HTTP status of every JSON-RPC answer it sees. */
function recordingFetch(seen) {
  return async (input, init) => {
    const response = await fetch(input, init);
    seen.push({ url: String(input), status: response.status });
    return response;
  };
}

/** A client built the way an A2A peer would: card from the base URL, JSON-RPC transport. */
async function clientFor(fetchImpl) {
  const factory = new ClientFactory(
    ClientFactoryOptions.createFrom(ClientFactoryOptions.default, {
      transports: [new JsonRpcTransportFactory({ fetchImpl })],
      cardResolver: new DefaultAgentCardResolver(), // plain fetch: the card needs no token
    }),
  );
  return factory.createFromUrl(baseUrl);
}

function request(returnImmediately) {
  return SendMessageRequest.fromJSON({
    message: {
      messageId: `js-${process.pid}-${Date.now()}-${Math.random().toString(16).slice(2)}`,
      role: "ROLE_USER",
      parts: [{ data: spec, mediaType: "application/json" }],
    },
    configuration: { returnImmediately, acceptedOutputModes: ["application/json"] },
  });
}

/** sendMessage answers a Task or a Message; the SDK hands back the bare value. */
function sendResult(result) {
  return Array.isArray(result.artifacts)
    ? { resultType: "task", task: Task.toJSON(result) }
    : { resultType: "message", message: result };
}

async function timed(promise) {
  const started = performance.now();
  const value = await promise;
  return [value, (performance.now() - started) / 1000];
}

const steps = {
  async card() {
    const card = await new DefaultAgentCardResolver().resolve(baseUrl);
    emit("card", { card: AgentCard.toJSON(card) });
    const client = await clientFor(bearerFetch(token));
    emit("client", {
      transport: client.transport.protocolName,
      protocolVersion: client.protocolVersion,
      endpoint: client.transport.endpoint ?? null,
    });
  },

  async "send-get"() {
    const client = await clientFor(bearerFetch(token));
    const [sent, sendSeconds] = await timed(client.sendMessage(request(true)));
    emit("send", { seconds: sendSeconds, ...sendResult(sent) });
    const fetched = await client.getTask({ id: sent.id, tenant: "" });
    emit("get", { task: Task.toJSON(fetched) });
    const [blocked, blockSeconds] = await timed(client.sendMessage(request(false)));
    emit("send-blocking", { seconds: blockSeconds, ...sendResult(blocked) });
  },

  async stream() {
    const client = await clientFor(bearerFetch(token));
    for await (const event of client.sendMessageStream(request(false))) {
      emit("event", { event: StreamResponse.toJSON(event) });
    }
    emit("end");
  },

  async "no-token"() {
    const seen = [];
    const client = await clientFor(recordingFetch(seen));
    const calls = {
      GetTask: () => client.getTask({ id: "tsk_0", tenant: "" }),
      SendMessage: () => client.sendMessage(request(true)),
    };
    for (const [method, call] of Object.entries(calls)) {
      seen.length = 0;
      try {
        const result = await call();
        emit("answered", { method, statuses: seen.map((s) => s.status), result });
      } catch (error) {
        emit("refused", { method, statuses: seen.map((s) => s.status), error: String(error?.message ?? error) });
      }
    }
  },
};

if (!baseUrl || !(step in steps)) {
  process.stderr.write(`usage: A2A_BASE_URL=... A2A_TOKEN=... node client.mjs ${Object.keys(steps).join("|")}\n`);
  process.exit(2);
}
try {
  await steps[step]();
} catch (error) {
  emit("error", { name: error?.name ?? null, message: String(error?.message ?? error), stack: error?.stack ?? null });
  process.exitCode = 1;
}
