// What the k6 scripts share: where the API is, the key, starting a task, and reading
// an event stream. k6 runs these as ES modules; see k6/README.md.
//
// Configuration comes from the environment only (k6 run -e NAME=value, or exported):
//   AXON_URL      base URL of the API (default http://127.0.0.1:8000)
//   AXON_API_KEY  a writer key (`axon keys create --tenant load`); never put it in a script
import http from 'k6/http';
import { fail } from 'k6';

export const BASE_URL = (__ENV.AXON_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
export const API_KEY = __ENV.AXON_API_KEY || '';

/** The four final kinds: a stream ends after one of them (docs/sse.md). */
export const TERMINAL = ['succeeded', 'failed', 'canceled', 'timed_out'];

/** A number from the environment, or `fallback` when unset. */
export function num(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isFinite(value)) {
    throw new Error(`${name} must be a number, got ${JSON.stringify(raw)}`);
  }
  return value;
}

/** Stop the test in setup() when there is no key to send. */
export function requireKey() {
  if (!API_KEY) {
    fail('set AXON_API_KEY to a writer key (axon keys create --tenant load)');
  }
}

/** The Authorization header (contract 4: the key travels in no URL), plus `extra`. */
export function headers(extra) {
  return Object.assign({ Authorization: `Bearer ${API_KEY}` }, extra || {});
}

/** POST /v1/tasks for a `mock` task with `args`; `fields` adds body fields. */
export function startTask(args, fields, tags) {
  const body = JSON.stringify(Object.assign({ adapter: 'mock', args: args }, fields || {}));
  return http.post(`${BASE_URL}/v1/tasks`, body, {
    headers: headers({ 'Content-Type': 'application/json' }),
    tags: Object.assign({ name: 'POST /v1/tasks' }, tags || {}),
  });
}

/** GET /v1/tasks/{id}. */
export function getTask(id) {
  return http.get(`${BASE_URL}/v1/tasks/${id}`, {
    headers: headers(),
    tags: { name: 'GET /v1/tasks/{id}' },
  });
}

/** POST /v1/tasks/{id}/cancel. */
export function cancelTask(id) {
  return http.post(`${BASE_URL}/v1/tasks/${id}/cancel`, null, {
    headers: headers(),
    tags: { name: 'POST /v1/tasks/{id}/cancel' },
  });
}

/**
 * Read a task's event stream as one long HTTP request (stock k6 has no SSE client:
 * its requests return when the response ends, and an Axon stream ends right after the
 * task's terminal event). From the beginning (`since`, default 0), or resuming with
 * `Last-Event-ID` when `lastEventId` is given. `timeout` bounds the whole read.
 */
export function openStream(id, opts) {
  const o = opts || {};
  const h = headers({ Accept: 'text/event-stream' });
  let url = `${BASE_URL}/v1/tasks/${id}/events`;
  if (o.lastEventId !== undefined && o.lastEventId !== null) {
    h['Last-Event-ID'] = String(o.lastEventId);
  } else {
    url += `?since_seq=${o.since || 0}`;
  }
  return http.get(url, {
    headers: h,
    timeout: o.timeout || '120s',
    responseType: 'text',
    tags: Object.assign({ name: 'GET /v1/tasks/{id}/events' }, o.tags || {}),
  });
}

/** A response header, whatever its case. */
export function header(res, name) {
  const wanted = name.toLowerCase();
  for (const key of Object.keys(res.headers || {})) {
    if (key.toLowerCase() === wanted) {
      return res.headers[key];
    }
  }
  return undefined;
}

/** The task's last seq now, from one NDJSON export page's X-Axon-Head-Seq header. */
export function headSeq(id) {
  const res = http.get(`${BASE_URL}/v1/tasks/${id}/events?since_seq=0&limit=1`, {
    headers: headers({ Accept: 'application/x-ndjson' }),
    tags: { name: 'GET /v1/tasks/{id}/events (export)' },
  });
  const head = Number(header(res, 'X-Axon-Head-Seq'));
  return res.status === 200 && Number.isInteger(head) ? head : null;
}

/**
 * The frames of an SSE body, by the WHATWG rules: lines end with CRLF, LF or CR; a blank
 * line ends a frame; `:` starts a comment; an unfinished last frame is dropped.
 * Each frame is `{id, event, data, retry}` (only the fields it had).
 */
export function parseSse(body) {
  const frames = [];
  let frame = {};
  let fields = 0;
  for (const line of String(body || '').split(/\r\n|\r|\n/)) {
    if (line === '') {
      if (fields > 0) {
        frames.push(frame);
      }
      frame = {};
      fields = 0;
      continue;
    }
    if (line.startsWith(':')) {
      continue;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) {
      value = value.slice(1);
    }
    if (field === 'data') {
      frame.data = frame.data === undefined ? value : `${frame.data}\n${value}`;
    } else if (field === 'id' || field === 'event' || field === 'retry') {
      frame[field] = value;
    } else {
      continue;
    }
    fields += 1;
  }
  return frames;
}

/**
 * Check the event frames of a stream that resumed after seq `after`: each seq must be
 * the previous one + 1. Returns counts of events, gaps (seqs skipped) and duplicates
 * (seqs at or below one already seen), the first and last seq, the terminal kind if
 * the stream reached one, the control frames (`axon.*`), and the last event frame.
 */
export function checkSeqs(frames, after) {
  const result = {
    events: 0,
    gaps: 0,
    duplicates: 0,
    first: null,
    last: after,
    terminal: null,
    controls: [],
    lastEvent: null,
  };
  for (const frame of frames) {
    if (frame.event !== undefined && frame.event.startsWith('axon.')) {
      result.controls.push(frame.event);
      continue;
    }
    if (frame.id === undefined) {
      continue; // the retry: line
    }
    const seq = Number(frame.id);
    result.events += 1;
    if (result.first === null) {
      result.first = seq;
    }
    if (seq <= result.last) {
      result.duplicates += 1;
      continue;
    }
    if (seq > result.last + 1) {
      result.gaps += seq - result.last - 1;
    }
    result.last = seq;
    result.lastEvent = frame;
    if (TERMINAL.includes(frame.event)) {
      result.terminal = frame.event;
    }
  }
  return result;
}

/** The `ts` (unix ms, stamped by the writer) of an event frame, or null. */
export function eventTs(frame) {
  try {
    const ts = JSON.parse(frame.data).ts;
    return Number.isFinite(ts) ? ts : null;
  } catch (_err) {
    return null;
  }
}
