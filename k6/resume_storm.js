// Resume storms: CLIENTS streams are cut at the same moment and every client reconnects
// at once with Last-Event-ID; each resumed stream must continue at exactly the next seq,
// with no gap and no duplicate, up to its task's terminal event. STORMS storms,
// STORM_EVERY_S apart. Mirrors the storms of bench/load.py.
//
//   k6 run -e AXON_URL=http://127.0.0.1:8000 -e CLIENTS=1000 k6/resume_storm.js
//
// Each storm is its own scenario (storm_0, storm_1, ...), starting STORM_EVERY_S after
// the previous one, with its own TASKS tasks (started in setup, long enough to last
// until their storm is over). Every VU of a storm, all at the same time:
//   1. attaches to one of the storm's tasks from seq 0 with a read timeout of
//      ATTACHED_S: k6 cuts every connection when it expires -- the mass disconnect
//      (these requests fail on purpose; they are tagged phase:attached);
//   2. takes its cursor: k6 drops the body of a request it timed out, so the client
//      reads the task's head (X-Axon-Head-Seq of a one-line NDJSON export) and resumes
//      from up to BEHIND events before it, as a client that missed the last few would;
//   3. reconnects with Last-Event-ID: <cursor> (phase:resume) and reads on, backfill
//      then live, to the terminal event, checking every seq from cursor + 1.
//
// Environment (besides AXON_URL / AXON_API_KEY, see lib.js):
//   CLIENTS=1000       streams cut and resumed per storm (VUs per storm)
//   TASKS=20           tasks per storm (the worker needs STORMS x TASKS free slots)
//   STORMS=3 STORM_EVERY_S=30
//   ATTACHED_S=10      how long the streams run before the cut
//   LIVE_S=10          how long the tasks run on after the cut
//   TICK_MS=500 BEHIND=5
//   RESUME_P99_MS=500  threshold on the reconnect's first byte p99
import exec from 'k6/execution';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  checkSeqs,
  getTask,
  headSeq,
  num,
  openStream,
  parseSse,
  requireKey,
  startTask,
} from './lib.js';

const CLIENTS = num('CLIENTS', 1000);
const TASKS = num('TASKS', 20);
const STORMS = num('STORMS', 3);
const STORM_EVERY_S = num('STORM_EVERY_S', 30);
const ATTACHED_S = num('ATTACHED_S', 10);
const LIVE_S = num('LIVE_S', 10);
const TICK_MS = num('TICK_MS', 500);
const BEHIND = num('BEHIND', 5);
const SETUP_SLACK_S = 30;

const resumeFirstByte = new Trend('resume_first_byte_ms', true);
const resumeErrors = new Rate('resume_errors');
const resumed = new Counter('resumed_streams');
const events = new Counter('sse_events');
const gaps = new Counter('sse_gaps');
const duplicates = new Counter('sse_duplicates');

function storms() {
  const scenarios = {};
  for (let i = 0; i < STORMS; i += 1) {
    scenarios[`storm_${i}`] = {
      executor: 'per-vu-iterations',
      vus: CLIENTS,
      iterations: 1,
      startTime: `${i * STORM_EVERY_S}s`,
      maxDuration: `${ATTACHED_S + LIVE_S + 120}s`,
      tags: { storm: String(i) },
    };
  }
  return scenarios;
}

export const options = {
  setupTimeout: '120s',
  scenarios: storms(),
  thresholds: {
    resume_errors: ['rate==0'],
    'http_req_failed{phase:resume}': ['rate==0'],
    sse_gaps: ['count==0'],
    sse_duplicates: ['count==0'],
    resume_first_byte_ms: [`p(99)<${num('RESUME_P99_MS', 500)}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

export function setup() {
  requireKey();
  const plan = [];
  for (let i = 0; i < STORMS; i += 1) {
    // Long enough to run until storm i is over, counted from now.
    const seconds = SETUP_SLACK_S + i * STORM_EVERY_S + ATTACHED_S + LIVE_S;
    const ticks = Math.ceil((seconds * 1000) / TICK_MS);
    const tasks = [];
    for (let j = 0; j < TASKS; j += 1) {
      const res = startTask({ count: ticks, interval_ms: TICK_MS }, { max_attempts: 5 });
      if (res.status !== 201) {
        throw new Error(`starting a task failed: ${res.status} ${res.body}`);
      }
      tasks.push(res.json('id'));
    }
    plan.push(tasks);
  }
  const deadline = Date.now() + 30000;
  for (const tasks of plan) {
    for (const id of tasks) {
      while (Date.now() < deadline && getTask(id).json('state') === 'queued') {
        sleep(0.2);
      }
    }
  }
  return { storms: plan };
}

export default function (data) {
  const storm = Number(exec.scenario.name.split('_')[1]);
  const tasks = data.storms[storm];
  const task = tasks[exec.scenario.iterationInTest % tasks.length];

  // 1. Attached until the cut: the read times out for every VU at about the same time.
  openStream(task, { since: 0, timeout: `${ATTACHED_S}s`, tags: { phase: 'attached' } });

  // 2. The cursor this client resumes from.
  const head = headSeq(task);
  if (head === null) {
    resumeErrors.add(true);
    return;
  }
  const cursor = Math.max(0, head - Math.floor(Math.random() * (BEHIND + 1)));

  // 3. All at once: reconnect with Last-Event-ID, read to the terminal event.
  const res = openStream(task, {
    lastEventId: cursor,
    timeout: `${LIVE_S + 120}s`,
    tags: { phase: 'resume' },
  });
  const seen = checkSeqs(parseSse(res.body), cursor);
  resumeFirstByte.add(res.timings.waiting);
  events.add(seen.events);
  gaps.add(seen.gaps);
  duplicates.add(seen.duplicates);
  const ok = check(res, {
    'resume 200': (r) => r.status === 200,
    'resumes at cursor + 1': () => seen.first === cursor + 1 || seen.events === 0,
    'resumed stream reaches a terminal event': () => seen.terminal !== null,
  });
  resumeErrors.add(!ok);
  if (ok) {
    resumed.add(1);
  }
}
