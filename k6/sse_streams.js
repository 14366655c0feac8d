// Attach many SSE streams at once: STREAMS VUs each follow one of TASKS running tasks
// from seq 0 (backfill, then live) to its terminal event, counting the events and
// checking every seq. Mirrors the "watchers" of bench/load.py.
//
//   k6 run -e AXON_URL=http://127.0.0.1:8000 -e STREAMS=2000 -e TASKS=100 k6/sse_streams.js
//
// Stock k6 has no SSE client (grafana/k6#746), so each stream is one long HTTP read:
// k6 returns the response when it ends, which an Axon stream does right after the
// task's terminal event. The tasks therefore have a known length (TICKS x TICK_MS) and
// the VUs attach, spread over RAMP_S, while they run; each VU holds its connection open
// until its task ends, so the `vus` metric is the number of open streams. What a long
// read cannot give is the arrival time of each frame: the script reports the time to
// the first byte (the `retry:` line) and, for the terminal event, its `ts` -> the end
// of the response (same clocks only when k6 runs on the API's machine).
//
// Environment (besides AXON_URL / AXON_API_KEY, see lib.js):
//   STREAMS=2000       concurrent streams (VUs)
//   TASKS=100          tasks the streams are spread over (the worker needs that many
//                      free slots: AXON_WORKER_CONCURRENCY)
//   TICKS=90 TICK_MS=1000  the mock tasks: one tick a second for 90 s
//   RAMP_S=30          the VUs attach evenly over this many seconds
//   ATTACH_P95_MS=50   threshold on the first byte's p95 (PRODUCT.md: attach p95 <= 50 ms)
import exec from 'k6/execution';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  checkSeqs,
  eventTs,
  getTask,
  num,
  openStream,
  parseSse,
  requireKey,
  startTask,
} from './lib.js';

const STREAMS = num('STREAMS', 2000);
const TASKS = num('TASKS', 100);
const TICKS = num('TICKS', 90);
const TICK_MS = num('TICK_MS', 1000);
const RAMP_S = num('RAMP_S', 30);
const TASK_S = (TICKS * TICK_MS) / 1000;

const firstByte = new Trend('sse_first_byte_ms', true);
const streamSeconds = new Trend('sse_stream_s');
const terminalDelay = new Trend('sse_terminal_delay_ms', true);
const streamErrors = new Rate('sse_stream_errors');
const events = new Counter('sse_events');
const gaps = new Counter('sse_gaps');
const duplicates = new Counter('sse_duplicates');

export const options = {
  setupTimeout: '120s',
  scenarios: {
    streams: {
      executor: 'per-vu-iterations',
      vus: STREAMS,
      iterations: 1,
      maxDuration: `${Math.ceil(RAMP_S + TASK_S + 120)}s`,
    },
  },
  thresholds: {
    sse_stream_errors: ['rate==0'],
    http_req_failed: ['rate==0'],
    sse_gaps: ['count==0'],
    sse_duplicates: ['count==0'],
    sse_first_byte_ms: [`p(95)<${num('ATTACH_P95_MS', 50)}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  requireKey();
  if (TASK_S <= RAMP_S) {
    throw new Error('the tasks (TICKS x TICK_MS) must outlast the ramp (RAMP_S)');
  }
  const tasks = [];
  for (let i = 0; i < TASKS; i += 1) {
    const res = startTask({ count: TICKS, interval_ms: TICK_MS }, { max_attempts: 5 });
    if (res.status !== 201) {
      throw new Error(`starting a task failed: ${res.status} ${res.body}`);
    }
    tasks.push(res.json('id'));
  }
  // Streams should meet running tasks: wait (a little) until the workers claimed them.
  const deadline = Date.now() + 30000;
  for (const id of tasks) {
    while (Date.now() < deadline && getTask(id).json('state') === 'queued') {
      sleep(0.2);
    }
  }
  return { tasks: tasks };
}

export default function (data) {
  const vu = exec.vu.idInTest; // 1..STREAMS
  sleep(((vu - 1) / STREAMS) * RAMP_S);
  const task = data.tasks[(vu - 1) % data.tasks.length];
  const res = openStream(task, { since: 0, timeout: `${Math.ceil(TASK_S + 120)}s` });
  const arrived = Date.now();
  const seen = checkSeqs(parseSse(res.body), 0);
  firstByte.add(res.timings.waiting);
  streamSeconds.add(res.timings.duration / 1000);
  events.add(seen.events);
  gaps.add(seen.gaps);
  duplicates.add(seen.duplicates);
  const ok = check(res, {
    'stream 200': (r) => r.status === 200,
    'stream starts at seq 1': () => seen.first === 1,
    'stream reaches a terminal event': () => seen.terminal !== null,
    'no control frame': () => seen.controls.length === 0,
  });
  streamErrors.add(!ok);
  const ts = seen.terminal !== null ? eventTs(seen.lastEvent) : null;
  if (ts !== null) {
    terminalDelay.add(arrived - ts);
  }
}
