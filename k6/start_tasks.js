// Start tasks at a steady rate (an open model: k6's constant-arrival-rate executor starts
// RATE iterations a second whether or not earlier ones have returned), and follow each
// one over SSE to its terminal event. Mirrors the "starts" of bench/load.py.
//
//   k6 run -e AXON_URL=http://127.0.0.1:8000 -e RATE=170 -e DURATION=10m k6/start_tasks.js
//
// Environment (besides AXON_URL / AXON_API_KEY, see lib.js):
//   RATE=170           task starts per second
//   DURATION=10m       how long to start them
//   TICKS=3 TICK_MS=100  the mock task: TICKS tick events, TICK_MS before each
//   FOLLOW=1           0: only start tasks, do not read their streams
//   STREAM_TIMEOUT=120s  longest wait for a task's terminal event
//   START_P99_MS=250   threshold on the POST's p99
//   E2E_P99_MS=15000   threshold on POST -> terminal event p99 (a worker killed
//                      mid-task costs a lease timeout, 10 s by default)
//   VUS, MAX_VUS       pre-allocated and maximum VUs (default from RATE and FOLLOW)
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { checkSeqs, eventTs, num, openStream, parseSse, requireKey, startTask } from './lib.js';

const RATE = num('RATE', 170);
const DURATION = __ENV.DURATION || '10m';
const TICKS = num('TICKS', 3);
const TICK_MS = num('TICK_MS', 100);
const FOLLOW = (__ENV.FOLLOW || '1') !== '0';
const STREAM_TIMEOUT = __ENV.STREAM_TIMEOUT || '120s';
// A following VU is busy for the task's whole life: about RATE x (run time) VUs.
const VUS = num('VUS', FOLLOW ? Math.ceil(RATE * 2) : Math.ceil(RATE / 10) + 10);
const MAX_VUS = num('MAX_VUS', FOLLOW ? Math.ceil(RATE * 20) : Math.ceil(RATE) + 50);

const taskStart = new Trend('task_start_ms', true);
const startErrors = new Rate('task_start_errors');
const started = new Counter('tasks_started');
const firstByte = new Trend('sse_first_byte_ms', true);
const endToEnd = new Trend('task_end_to_end_ms', true);
const terminalDelay = new Trend('sse_terminal_delay_ms', true);
const events = new Counter('sse_events');
const gaps = new Counter('sse_gaps');
const duplicates = new Counter('sse_duplicates');
const withoutTerminal = new Counter('tasks_without_terminal');

export const options = {
  scenarios: {
    start_tasks: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
      maxVUs: MAX_VUS,
    },
  },
  thresholds: {
    task_start_errors: ['rate==0'],
    http_req_failed: ['rate==0'],
    task_start_ms: ['p(50)<50', `p(99)<${num('START_P99_MS', 250)}`],
    task_end_to_end_ms: [`p(99)<${num('E2E_P99_MS', 15000)}`],
    sse_gaps: ['count==0'],
    sse_duplicates: ['count==0'],
    tasks_without_terminal: ['count==0'],
    dropped_iterations: ['count==0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

export function setup() {
  requireKey();
}

export default function () {
  const sent = Date.now();
  const res = startTask({ count: TICKS, interval_ms: TICK_MS }, { max_attempts: 5 });
  const ok = check(res, {
    'task created (201/202)': (r) => r.status === 201 || r.status === 202,
  });
  startErrors.add(!ok);
  taskStart.add(res.timings.duration);
  if (!ok) {
    return;
  }
  started.add(1);
  if (!FOLLOW) {
    return;
  }
  const stream = openStream(res.json('id'), { since: 0, timeout: STREAM_TIMEOUT });
  const arrived = Date.now();
  const seen = checkSeqs(parseSse(stream.body), 0);
  firstByte.add(stream.timings.waiting);
  events.add(seen.events);
  gaps.add(seen.gaps);
  duplicates.add(seen.duplicates);
  const complete = check(stream, {
    'stream 200': (r) => r.status === 200,
    'stream starts at seq 1': () => seen.first === 1,
    'stream reaches a terminal event': () => seen.terminal !== null,
  });
  if (complete) {
    endToEnd.add(arrived - sent);
    const ts = eventTs(seen.lastEvent);
    if (ts !== null) {
      terminalDelay.add(arrived - ts);
    }
  } else {
    withoutTerminal.add(1);
  }
}
