"""The k6 load scripts in ``k6/``: there is no k6 binary here, so they are checked with
node instead.

* each file parses as an ES module (``node --check --input-type=module``);
* statically: each script exports ``options`` and a default function, imports only k6
  modules that exist and ``./lib.js``, takes the URL and key from ``__ENV``, and holds
  no key;
* dynamically, with stub k6 modules (a node loader hook): every script's init code
  runs, its scenarios and thresholds are well formed (known executors, exported exec
  functions, thresholds on metrics that exist), and ``setup()`` and the default
  function run through against a fake API, passing every check;
* ``lib.js``'s SSE parser and seq checker on hand-made streams.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

K6 = Path(__file__).resolve().parent.parent / "k6"
SCRIPTS = ["start_tasks.js", "sse_streams.js", "resume_storm.js"]
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

K6_MODULES = {"k6", "k6/http", "k6/metrics", "k6/execution", "k6/encoding", "k6/crypto"}
"""k6's built-in modules these scripts may use (besides ``k6/experimental/...``)."""
EXECUTORS = {
    "shared-iterations",
    "per-vu-iterations",
    "constant-vus",
    "ramping-vus",
    "constant-arrival-rate",
    "ramping-arrival-rate",
    "externally-controlled",
}
BUILTIN_METRICS = {
    "checks",
    "data_received",
    "data_sent",
    "dropped_iterations",
    "http_req_blocked",
    "http_req_connecting",
    "http_req_duration",
    "http_req_failed",
    "http_req_receiving",
    "http_req_sending",
    "http_req_tls_handshaking",
    "http_req_waiting",
    "http_reqs",
    "iteration_duration",
    "iterations",
    "vus",
    "vus_max",
}
IMPORT = re.compile(r"^\s*import\s+(?:[\w*{}\s,]+?\s+from\s+)?['\"]([^'\"]+)['\"]", re.MULTILINE)
THRESHOLD = re.compile(r"^[a-z_][a-z0-9_]*(\{[^}]*\})?$")

# A loader hook that answers every ``k6...`` import with a stub module.
HOOKS = r"""
const STUBS = {
  'k6': `
    export function check(value, sets, tags) {
      let ok = true;
      for (const [name, fn] of Object.entries(sets)) {
        const passed = !!fn(value);
        globalThis.__k6.checks.push({ name, passed });
        ok = ok && passed;
      }
      return ok;
    }
    export function sleep(seconds) {}
    export function fail(message) { throw new Error(message); }
    export function group(name, fn) { return fn(); }
    export default { check, sleep, fail, group };`,
  'k6/metrics': `
    class Metric {
      constructor(name, isTime) {
        this.name = name;
        globalThis.__k6.metrics[name] = { type: this.constructor.name, values: [] };
      }
      add(value, tags) {
        if (typeof value !== 'number' && typeof value !== 'boolean') {
          throw new Error('metric ' + this.name + ' got ' + typeof value);
        }
        globalThis.__k6.metrics[this.name].values.push(Number(value));
      }
    }
    export class Counter extends Metric {}
    export class Gauge extends Metric {}
    export class Rate extends Metric {}
    export class Trend extends Metric {}
    export default { Counter, Gauge, Rate, Trend };`,
  'k6/execution': `
    export default {
      vu: { idInTest: 1, idInInstance: 1, iterationInInstance: 0, iterationInScenario: 0 },
      scenario: { get name() { return globalThis.__k6.scenario; }, iterationInTest: 0,
                  iterationInInstance: 0, startTime: 0, progress: 0 },
      test: { abort(message) { throw new Error(message); } },
    };`,
  'k6/http': `export default globalThis.__k6.http;
    export const expectedStatuses = (...codes) => codes;`,
};

export async function resolve(specifier, context, next) {
  if (specifier === 'k6' || specifier.startsWith('k6/')) {
    return { url: 'k6stub:' + specifier, shortCircuit: true };
  }
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (url.startsWith('k6stub:')) {
    const name = url.slice('k6stub:'.length);
    const source = STUBS[name] ?? 'export default {};';
    return { format: 'module', source, shortCircuit: true };
  }
  return next(url, context);
}
"""

# A fake API behind the stub k6/http: tasks tick three times and succeed; the event
# stream honours since_seq and Last-Event-ID; an export page reports a head of 7.
RUN = r"""
import { register } from 'node:module';
register(new URL('./hooks.mjs', import.meta.url));

const [target, mode, scenario] = process.argv.slice(2);
const requests = [];
function response(status, body, headers) {
  return {
    status, body, headers: headers || {}, error: '', error_code: 0,
    timings: { duration: 4, waiting: 2, blocked: 0, connecting: 0 },
    json(path) {
      const value = JSON.parse(body);
      return path === undefined ? value : value[path];
    },
  };
}
function stream(task, after) {
  const kinds = ['queued', 'claimed', 'tick', 'tick', 'tick', 'tick', 'tick', 'succeeded'];
  let body = 'retry: 2000\n\n: keep-alive\n\n';
  for (let seq = after + 1; seq <= kinds.length; seq += 1) {
    const event = JSON.stringify({ task, seq, prev: '0'.repeat(64), ts: Date.now(),
                                   kind: kinds[seq - 1], data: {} });
    body += 'id: ' + seq + '\nevent: ' + kinds[seq - 1] + '\ndata: ' + event + '\n\n';
  }
  return body;
}
function request(method, url, body, params) {
  const headers = (params && params.headers) || {};
  requests.push({ method, url, headers, timeout: params && params.timeout });
  if (!String(headers.Authorization || '').startsWith('Bearer ')) {
    return response(401, '{"error":{"code":"unauthenticated"}}');
  }
  const path = new URL(url).pathname;
  let match;
  if (method === 'POST' && path === '/v1/tasks') {
    return response(201, JSON.stringify({ id: 't_TEST', state: 'queued' }));
  }
  if (method === 'POST' && (match = path.match(/^\/v1\/tasks\/([^/]+)\/cancel$/))) {
    return response(202, JSON.stringify({ id: match[1], state: 'running' }));
  }
  if (method === 'GET' && (match = path.match(/^\/v1\/tasks\/([^/]+)\/events$/))) {
    if (headers.Accept === 'text/event-stream') {
      const last = headers['Last-Event-ID'];
      const since = new URL(url).searchParams.get('since_seq');
      const after = last !== undefined ? Number(last) : Number(since || 0);
      return response(200, stream(match[1], after), { 'Content-Type': 'text/event-stream' });
    }
    return response(200, '{}\n', { 'X-Axon-Head-Seq': '7', 'X-Axon-Last-Seq': '1' });
  }
  if (method === 'GET' && (match = path.match(/^\/v1\/tasks\/([^/]+)$/))) {
    return response(200, JSON.stringify({ id: match[1], state: 'running' }));
  }
  return response(404, '{"error":{"code":"not_found"}}');
}
globalThis.__k6 = {
  checks: [], metrics: {}, scenario: scenario || 'default',
  http: {
    get: (url, params) => request('GET', url, null, params),
    post: (url, body, params) => request('POST', url, body, params),
    request: (method, url, body, params) => request(method, url, body, params),
  },
};
globalThis.__ENV = JSON.parse(process.env.K6_TEST_ENV || '{}');

const module = await import(new URL(target, 'file://' + process.cwd() + '/').href);
const out = { exports: Object.keys(module).sort(), types: {} };
for (const [name, value] of Object.entries(module)) out.types[name] = typeof value;
if (mode === 'inspect') {
  out.options = module.options;
  out.metrics = Object.fromEntries(
    Object.entries(globalThis.__k6.metrics).map(([k, v]) => [k, v.type]));
} else if (mode === 'run') {
  const data = module.setup ? module.setup() : undefined;
  const exec = (module.options.scenarios[scenario] || {}).exec || 'default';
  module[exec](data);
  out.checks = globalThis.__k6.checks;
  out.metrics = globalThis.__k6.metrics;
  out.requests = requests;
} else {
  out.result = module[mode](...JSON.parse(process.env.K6_TEST_ARGS || '[]'));
}
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the loader hook and the runner."""
    directory = tmp_path_factory.mktemp("k6-harness")
    (directory / "hooks.mjs").write_text(HOOKS)
    (directory / "run.mjs").write_text(RUN)
    return directory


def node(harness: Path, script: str, mode: str, *extra: str, **env: Any) -> dict[str, Any]:
    """Run ``script`` under the stub k6 modules; its JSON report."""
    assert NODE is not None
    environment = dict(os.environ)
    environment["K6_TEST_ENV"] = json.dumps(
        env.pop("k6_env", {"AXON_URL": "http://axon.test:8000/", "AXON_API_KEY": "axon_x_y"})
    )
    environment["K6_TEST_ARGS"] = json.dumps(env.pop("args", []))
    done = subprocess.run(
        [NODE, str(harness / "run.mjs"), str(K6 / script), mode, *extra],
        capture_output=True,
        text=True,
        env=environment,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def source(name: str) -> str:
    return (K6 / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["lib.js", *SCRIPTS])
def test_parses_as_an_es_module(name: str) -> None:
    """Each file is valid ES module syntax (node parses it without running it)."""
    assert NODE is not None
    done = subprocess.run(
        [NODE, "--check", "--input-type=module"],
        input=source(name),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["lib.js", *SCRIPTS])
def test_imports_only_k6_modules_and_the_shared_lib(name: str) -> None:
    """Imports are k6 built-ins, ``k6/experimental/...`` or ``./lib.js``."""
    imports = IMPORT.findall(source(name))
    assert imports
    for module in imports:
        if module.startswith("./"):
            assert (K6 / module).is_file(), module
        else:
            assert module in K6_MODULES or module.startswith("k6/experimental/"), module


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_exports_options_and_a_default_function(name: str) -> None:
    """A k6 script needs ``export const options`` and ``export default function``."""
    text = source(name)
    assert re.search(r"^export const options\s*=", text, re.MULTILINE)
    assert re.search(r"^export default function\b", text, re.MULTILINE)
    assert "from './lib.js'" in text


def test_url_and_key_come_from_the_environment_only() -> None:
    """``lib.js`` reads AXON_URL and AXON_API_KEY from ``__ENV``; nothing holds a key,
    and the key goes in the Authorization header, never in a URL."""
    lib = source("lib.js")
    assert "__ENV.AXON_URL" in lib
    assert "__ENV.AXON_API_KEY" in lib
    for name in ["lib.js", *SCRIPTS, "README.md"]:
        text = source(name)
        assert not re.search(r"axon_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}", text), name
        assert not re.search(r"[?&](api_?)?key=", text, re.IGNORECASE), name
        assert "Bearer ${API_KEY}" not in text or name == "lib.js"


@pytest.mark.parametrize("name", SCRIPTS)
def test_options_are_well_formed(harness: Path, name: str) -> None:
    """Init code runs; scenarios use real executors and exported functions; thresholds
    name metrics that exist (k6 refuses thresholds on unknown metrics)."""
    report = node(harness, name, "inspect")
    assert report["types"]["default"] == "function"
    assert report["types"]["options"] == "object"
    options = report["options"]
    assert options["scenarios"]
    for scenario in options["scenarios"].values():
        assert scenario["executor"] in EXECUTORS
        assert report["types"].get(scenario.get("exec", "default")) == "function"
    assert options["thresholds"]
    for key, rules in options["thresholds"].items():
        assert THRESHOLD.match(key), key
        metric_name = key.split("{")[0]
        assert metric_name in BUILTIN_METRICS or metric_name in report["metrics"], key
        assert rules
        assert all(isinstance(rule, str) for rule in rules)


def test_options_follow_the_environment(harness: Path) -> None:
    """RATE and DURATION drive the start scenario; STORMS the storm scenarios."""
    start = node(
        harness,
        "start_tasks.js",
        "inspect",
        k6_env={"AXON_API_KEY": "k", "RATE": "25", "DURATION": "30s", "FOLLOW": "0"},
    )["options"]["scenarios"]["start_tasks"]
    assert start["executor"] == "constant-arrival-rate"
    assert (start["rate"], start["timeUnit"], start["duration"]) == (25, "1s", "30s")
    storms = node(
        harness,
        "resume_storm.js",
        "inspect",
        k6_env={"AXON_API_KEY": "k", "STORMS": "4", "STORM_EVERY_S": "20"},
    )["options"]["scenarios"]
    assert sorted(storms) == ["storm_0", "storm_1", "storm_2", "storm_3"]
    assert storms["storm_3"]["startTime"] == "60s"


@pytest.mark.parametrize(
    ("name", "scenario"),
    [("start_tasks.js", "start_tasks"), ("sse_streams.js", "streams"),
     ("resume_storm.js", "storm_1")],
)  # fmt: skip
def test_an_iteration_runs_against_a_fake_api(harness: Path, name: str, scenario: str) -> None:
    """``setup()`` and one iteration run through against a fake API: every check
    passes, events are counted, no gap or duplicate, and every request carries the key
    in its Authorization header to the configured URL."""
    report = node(harness, name, "run", scenario)
    failed = [c["name"] for c in report["checks"] if not c["passed"]]
    assert report["checks"]
    assert not failed
    metrics = report["metrics"]
    assert sum(metrics["sse_events"]["values"]) > 0
    assert sum(metrics["sse_gaps"]["values"]) == 0
    assert sum(metrics["sse_duplicates"]["values"]) == 0
    for request in report["requests"]:
        assert request["url"].startswith("http://axon.test:8000/v1/")
        assert request["headers"]["Authorization"] == "Bearer axon_x_y"
    streams = [r for r in report["requests"] if r["headers"].get("Accept") == "text/event-stream"]
    assert streams
    assert all(r["timeout"] for r in streams)
    if name == "resume_storm.js":
        assert streams[-1]["headers"]["Last-Event-ID"] in {"2", "3", "4", "5", "6", "7"}


def test_setup_refuses_to_run_without_a_key(harness: Path) -> None:
    """Without AXON_API_KEY, ``setup()`` fails the test before any request."""
    assert NODE is not None
    environment = dict(os.environ, K6_TEST_ENV=json.dumps({}), K6_TEST_ARGS="[]")
    done = subprocess.run(
        [NODE, str(harness / "run.mjs"), str(K6 / "start_tasks.js"), "setup"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "AXON_API_KEY" in done.stderr


def test_parse_sse_follows_the_whatwg_rules(harness: Path) -> None:
    """CRLF, LF and CR line ends, comments, the optional space, a dropped unfinished
    last frame."""
    body = (
        'retry: 2000\r\n\r\n: keep-alive\n\nid: 1\nevent: queued\ndata: {"seq":1}\n\n'
        'id:2\revent:tick\rdata:{"seq":2}\r\r'
        "event: axon.lagged\ndata: {}\n\nid: 3\nevent: tick\ndata: {"
    )
    frames = node(harness, "lib.js", "parseSse", args=[body])["result"]
    assert frames == [
        {"retry": "2000"},
        {"id": "1", "event": "queued", "data": '{"seq":1}'},
        {"id": "2", "event": "tick", "data": '{"seq":2}'},
        {"event": "axon.lagged", "data": "{}"},
    ]


def test_check_seqs_counts_gaps_and_duplicates(harness: Path) -> None:
    """Seqs must go up by one from the cursor; lower is a duplicate, a jump a gap."""
    frames = [
        {"retry": "2000"},
        {"id": "5", "event": "tick", "data": "{}"},
        {"id": "5", "event": "tick", "data": "{}"},
        {"id": "8", "event": "tick", "data": "{}"},
        {"event": "axon.reconnect", "data": "{}"},
        {"id": "9", "event": "succeeded", "data": '{"ts":1700000000000}'},
    ]
    seen = node(harness, "lib.js", "checkSeqs", args=[frames, 4])["result"]
    assert (seen["events"], seen["gaps"], seen["duplicates"]) == (4, 2, 1)
    assert (seen["first"], seen["last"], seen["terminal"]) == (5, 9, "succeeded")
    assert seen["controls"] == ["axon.reconnect"]
    clean = node(harness, "lib.js", "checkSeqs", args=[frames[:2], 4])["result"]
    assert (clean["gaps"], clean["duplicates"], clean["terminal"]) == (0, 0, None)
