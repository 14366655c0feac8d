// Follow an Axon task's events over SSE with fetch (browsers and Node >= 18, no dependencies).
// EventSource cannot send an Authorization header, so this reads the stream itself.
//
//   for await (const { id, event, data } of followTask(baseUrl, apiKey, taskId)) { ... }
//
// CLI: AXON_API_KEY=<api key> node docs/examples/fetch-sse.mjs <baseUrl> <taskId>
// prints each event's bytes (the SSE data line), one line per event, and exits 0 after
// the terminal event. See docs/sse.md.

const TERMINAL = new Set(["succeeded", "failed", "canceled", "timed_out"]);

export async function* followTask(baseUrl, apiKey, taskId, { since = 0, signal } = {}) {
  const base = baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`;
  const url = new URL(`v1/tasks/${encodeURIComponent(taskId)}/events?since_seq=${since}`, base);
  const state = { lastId: "", retryMs: 2000 }; // the server's `retry:` replaces the default
  for (;;) {
    const headers = { Authorization: `Bearer ${apiKey}`, Accept: "text/event-stream" };
    if (state.lastId) headers["Last-Event-ID"] = state.lastId; // wins over since_seq
    let response;
    try {
      response = await fetch(url, { headers, signal });
    } catch (err) {
      if (signal?.aborted) throw err;
      await sleep(state.retryMs, signal); // network error: try again
      continue;
    }
    if (!response.ok) {
      if (response.status < 500) throw await httpError(response); // 4xx: retrying cannot help
      await response.body?.cancel();
      await sleep(state.retryMs, signal);
      continue;
    }
    const reader = response.body.getReader();
    let unavailable = null;
    let events = 0;
    let ended = false; // the server closed the stream on purpose
    let resume = false; // ... and asked us to come back (axon.lagged / axon.reconnect)
    try {
      for await (const frame of frames(reader, state)) {
        if (frame.event === "axon.unavailable") { unavailable = JSON.parse(frame.data); break; }
        if (frame.event === "axon.lagged" || frame.event === "axon.reconnect") { resume = true; break; }
        events += 1;
        yield frame;
        if (TERMINAL.has(frame.event)) return;
      }
      ended = true;
    } catch (err) {
      if (signal?.aborted) throw err; // otherwise the connection broke: reconnect below
    } finally {
      reader.cancel().catch(() => {});
    }
    if (unavailable) {
      const { code, message, details } = unavailable; // the range is gone: reconnecting cannot help
      throw Object.assign(new Error(`${code}: ${message}`), { code, details });
    }
    // An empty stream that ended without a control frame: the task had finished.
    if (ended && !resume && events === 0) return;
    await sleep(state.retryMs, signal);
  }
}

// SSE parsing per the WHATWG rules: lines end with CRLF, LF or CR; ":" starts a comment;
// one space after "field:" is dropped; an empty line dispatches the event.
async function* frames(reader, state) {
  const decoder = new TextDecoder(); // UTF-8; drops a leading BOM
  const eol = /\r\n|\n|\r(?!$)/g; // a CR at the end of the buffer may be half of a CRLF
  let buffer = "", data = "", event = "", id = state.lastId;
  for (;;) {
    const { value, done } = await reader.read();
    buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
    if (done && buffer.endsWith("\r")) buffer += "\n";
    let start = 0;
    eol.lastIndex = 0;
    for (let m; (m = eol.exec(buffer)); start = eol.lastIndex) {
      const line = buffer.slice(start, m.index);
      if (line === "") {
        state.lastId = id;
        if (data) yield { id, event: event || "message", data: data.slice(0, -1) };
        data = event = "";
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") data += `${text}\n`;
        else if (field === "event") event = text;
        else if (field === "id" && !text.includes("\0")) id = text;
        else if (field === "retry" && /^[0-9]+$/.test(text)) state.retryMs = Number(text);
      }
    }
    buffer = buffer.slice(start);
    if (done) return; // an unfinished event at the end is discarded
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => { clearTimeout(timer); reject(signal.reason); };
    const done = () => { signal?.removeEventListener("abort", onAbort); resolve(); };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

async function httpError(response) {
  const body = await response.json().catch(() => ({}));
  const { code = `http_${response.status}`, message = response.statusText, details = {} } =
    body.error ?? {};
  const { status } = response;
  return Object.assign(new Error(`${code}: ${message}`), { code, details, status });
}

async function main([baseUrl, taskId]) {
  const apiKey = process.env.AXON_API_KEY;
  if (!baseUrl || !taskId || !apiKey) {
    console.error("usage: AXON_API_KEY=<api key> node fetch-sse.mjs <baseUrl> <taskId>");
    return 2;
  }
  try {
    for await (const { data } of followTask(baseUrl, apiKey, taskId)) {
      const flushed = process.stdout.write(`${data}\n`); // the event bytes, one line each
      if (!flushed) await new Promise((go) => process.stdout.once("drain", go));
    }
    return 0;
  } catch (err) {
    console.error(`fetch-sse: ${err.message}`);
    return 1;
  }
}

// Under Node, run the CLI when this file is the main module (browsers have no `process`).
if (typeof process === "object" && process.argv?.[1]) {
  const { pathToFileURL } = await import("node:url");
  const { realpathSync } = await import("node:fs");
  if (import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
    process.exitCode = await main(process.argv.slice(2));
  }
}
