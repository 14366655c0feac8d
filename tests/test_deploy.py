"""The deployment files: ``Dockerfile``, ``.dockerignore``, ``docker-compose.yml``, ``deploy/``.

No Docker engine runs here, so the image and the Compose file are checked
statically, plus everything that can run without an engine: the Compose file
is validated against the Compose Specification's own JSON schema (vendored in
``tests/data/compose-spec.json``; origin and version in ``tests/data/README.md``),
every ``axon`` command and ``AXON_*`` variable it uses is checked against the
real CLI parser and the code that reads the environment, Prometheus' targets
against the services and their ports, the container healthcheck script runs
against live endpoints, the wheel the Dockerfile builds is built here and
installed into a fresh venv, and each Compose service's command runs as a
plain process with its Compose environment until it passes its healthcheck.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import zipfile
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from axon import cli
from axon._version import __version__
from axon.embedded import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
HEALTHCHECK_IN_IMAGE = "/opt/axon/healthcheck.py"
ROLES = ("serve", "worker", "compactor")
"""The long-running roles of the image (the command's first word)."""
ROLE_PORT_VARIABLE = {
    "serve": "AXON_API_PORT",
    "worker": "AXON_WORKER_METRICS_PORT",
    "compactor": "AXON_COMPACTOR_METRICS_PORT",
}
"""The variable that sets the HTTP port each role listens on (API, or metrics)."""


# -- parsing -------------------------------------------------------------------------


class Instruction(NamedTuple):
    """One Dockerfile instruction: its keyword (upper case) and its argument text."""

    keyword: str
    args: str

    def json_args(self) -> list[str]:
        """The arguments in exec (JSON array) form."""
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} is not in exec form: {self.args}"
        return [str(x) for x in value]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order: continuation lines joined, comments and blank lines dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (and parser directives), also inside continuations
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The build stages, each starting with its FROM."""
    out: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            out.append([])
        if out:
            out[-1].append(instruction)
    return out


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARG defaults declared before the first FROM."""
    args: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            args[name] = default
    return args


def substitute(value: str, variables: dict[str, str]) -> str:
    """Expand ``$NAME`` and ``${NAME}`` from ``variables`` (unknown ones stay)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, value)


def copy_parts(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """A COPY's ``--flag=value`` options, sources and destination."""
    words = shlex.split(instruction.args)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    rest = [w for w in words if not w.startswith("--")]
    return flags, rest[:-1], rest[-1]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    """The ENV values a stage sets (``KEY=value`` form)."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether ``path`` (relative to the context) is left out of the build context.

    Docker's rules, simplified: the last matching pattern decides; ``!`` re-includes;
    a pattern that matches a directory matches everything below it.
    """
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch(p, pattern) or fnmatch(parts[-1], pattern) for p in prefixes):
            excluded = not negate
    return excluded


def read_dockerignore() -> list[str]:
    """The patterns of ``.dockerignore``."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    """The parsed ``Dockerfile``."""
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """``docker-compose.yml`` as data (YAML anchors and merge keys resolved)."""
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    """``deploy/prometheus.yml`` as data."""
    data = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert isinstance(data, dict)
    return data


def axon_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the Axon image (built from this repository)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if "build" in service or str(service.get("image", "")).startswith("axon")
    }


def interpolate(text: str) -> str:
    """Compose interpolation: ``$$`` is a literal ``$``; ``${X:-default}`` takes the default."""
    text = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", text)
    return text.replace("$$", "$")


def axon_invocations(service: dict[str, Any]) -> list[list[str]]:
    """Every ``axon`` argv a service runs: its command under the image's ``axon``
    entrypoint, or the ``axon ...`` commands inside a ``/bin/sh -c`` script."""
    entrypoint = service.get("entrypoint", ["axon"])
    command = service.get("command", ["serve"])
    if isinstance(command, str):
        command = shlex.split(command)
    if entrypoint == ["axon"]:
        return [[interpolate(word) for word in command]]
    assert entrypoint[0] in ("/bin/sh", "sh"), f"unexpected entrypoint {entrypoint}"
    script = interpolate(" ".join([*entrypoint[1:], *command]).removeprefix("-c "))
    found = []
    for part in re.split(r"\|\||&&|;|\|", script):
        words = shlex.split(part)
        if words and words[0] == "axon":
            found.append(words[1:])
    return found


def role_of(service: dict[str, Any]) -> str | None:
    """``serve``, ``worker`` or ``compactor`` for a long-running Axon service."""
    argv = axon_invocations(service)
    if len(argv) == 1 and argv[0] and argv[0][0] in ROLES:
        return argv[0][0]
    return None


def listening_ports(service: dict[str, Any], image_env: dict[str, str]) -> set[int]:
    """The HTTP ports an Axon service listens on, from its variables and flags."""
    role = role_of(service)
    if role is None:
        return set()
    env = {**image_env, **{k: str(v) for k, v in service.get("environment", {}).items()}}
    ports = set()
    if env.get(ROLE_PORT_VARIABLE[role]):
        ports.add(int(env[ROLE_PORT_VARIABLE[role]]))
    argv = axon_invocations(service)[0]
    flag = "--port" if role == "serve" else "--metrics-port"
    if flag in argv:
        ports = {int(argv[argv.index(flag) + 1])}
    return ports


def final_stage_env(dockerfile: list[Instruction]) -> dict[str, str]:
    """The ENV of the image's final stage."""
    return env_of(stages(dockerfile)[-1])


def seconds(duration: str) -> float:
    """A Compose duration (``1m30s``, ``30s``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, f"not a duration: {duration}"
    return sum(float(n) * units[u] for n, u in parts)


# -- Dockerfile ------------------------------------------------------------------------


def test_dockerfile_builds_in_stages_from_python_311_slim(dockerfile: list[Instruction]) -> None:
    """The image is multi-stage, every stage on python:3.11-slim, and the first one builds."""
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2
    args = global_args(dockerfile)
    for stage in all_stages:
        image = substitute(stage[0].args.split()[0], args)
        assert image == "python:3.11-slim", stage[0]
    assert all_stages[0][0].args.split()[-1] == "build"
    build_runs = " ".join(i.args for i in all_stages[0] if i.keyword == "RUN")
    assert "pip wheel" in build_runs
    assert "python -m venv /opt/axon" in build_runs


def test_dockerfile_final_stage_runs_axon_unprivileged_with_a_healthcheck(
    dockerfile: list[Instruction],
) -> None:
    """The final stage copies the venv, runs as a non-root user, has a HEALTHCHECK on
    the API's /healthz, and ENTRYPOINT axon with `serve` as the default command."""
    final = stages(dockerfile)[-1]
    keywords = [i.keyword for i in final]
    copies = [copy_parts(i) for i in final if i.keyword == "COPY"]
    assert ({"from": "build"}, ["/opt/axon"], "/opt/axon") in copies

    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")

    env = final_stage_env(dockerfile)
    assert env["PATH"].split(":")[0] == "/opt/axon/bin"
    assert env["AXON_API_HOST"] == "0.0.0.0"  # noqa: S104 (inside the container)

    (healthcheck,) = [i for i in final if i.keyword == "HEALTHCHECK"]
    options, _, command = healthcheck.args.partition("CMD")
    assert "--interval=" in options
    assert "--timeout=" in options
    probe = json.loads(command)
    assert probe[:2] == ["python", HEALTHCHECK_IN_IMAGE]
    assert probe[2] == "/healthz"
    assert any(dest == HEALTHCHECK_IN_IMAGE for _, _, dest in copies)

    (entrypoint,) = [i for i in final if i.keyword == "ENTRYPOINT"]
    assert entrypoint.json_args() == ["axon"]
    (command_instruction,) = [i for i in final if i.keyword == "CMD"]
    assert command_instruction.json_args() == ["serve"]


def test_dockerfile_copies_only_files_of_the_build_context(dockerfile: list[Instruction]) -> None:
    """Every file a COPY takes from the context exists and is not excluded by .dockerignore."""
    patterns = read_dockerignore()
    sources = []
    for instruction in dockerfile:
        if instruction.keyword in ("COPY", "ADD"):
            flags, srcs, _ = copy_parts(instruction)
            if "from" not in flags:
                sources += srcs
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        kept = [
            f
            for f in files
            if not dockerignore_excludes(patterns, f.relative_to(ROOT).as_posix())
            and "__pycache__" not in f.parts
        ]
        assert kept, f"COPY {source}: .dockerignore leaves it out of the build context"
    assert not dockerignore_excludes(patterns, "axon/scripts/append.lua")


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_context() -> None:
    """The dev data dir (with its keys), the venv, git and caches never reach the build."""
    patterns = read_dockerignore()
    for path in (
        ".axon/receipt.key",
        ".axon/dev-key",
        ".venv/bin/python",
        ".git/config",
        "bench/results/sse-latest.json",
        "tests/test_api.py",
        "axon/__pycache__/cli.cpython-311.pyc",
        ".env",
    ):
        assert dockerignore_excludes(patterns, path), path


# -- the wheel the image installs -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_wheel_builds_and_its_axon_command_runs_from_a_fresh_venv(tmp_path: Path) -> None:
    """What the Dockerfile's build stage does: `pip wheel .` gives a wheel with the Lua
    scripts and the `axon` entry point, which installed into a new venv runs."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=150,
    )
    (wheel,) = wheels.glob("axon_tasks-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "axon = axon.cli:main" in archive.read(entry_points).decode()
    assert "axon/scripts/append.lua" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "deploy/"))]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=120,
    )
    # Dependencies come from this venv's site-packages (added as a plain path, so its
    # editable install of axon is not activated): axon itself must be the wheel's.
    site = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "deps-from-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    version = subprocess.run(
        [str(venv / "bin" / "axon"), "--version"], check=True, capture_output=True, text=True
    )
    assert version.stdout.strip() == f"axon {__version__}"
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import axon, axon.lua; print(axon.__file__); print(len(axon.lua.ALL))",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository, whose axon/ would shadow the installed one
    )
    location, scripts = probe.stdout.split()
    assert Path(location).is_relative_to(venv)
    assert int(scripts) > 0


# -- the container healthcheck -----------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 503
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    """A local HTTP server answering 200 on /healthz and 503 elsewhere."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``deploy/healthcheck.py`` as the image does."""
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "healthcheck.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def free_port() -> int:
    """A loopback port nothing listens on (just now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_healthcheck_probes_http_endpoints(http_port: int) -> None:
    """A 2xx answer is healthy (exit 0); a 503 or no answer is unhealthy (exit 1)."""
    ok = healthcheck("/healthz", env={"AXON_API_PORT": str(http_port)})
    assert (ok.returncode, ok.stdout.split(":")[0]) == (0, "healthy")
    assert healthcheck(f"http://127.0.0.1:{http_port}/healthz").returncode == 0
    failing = healthcheck(f"http://127.0.0.1:{http_port}/readyz")
    assert failing.returncode == 1
    assert "503" in failing.stdout
    nobody = healthcheck(f"http://127.0.0.1:{free_port()}/healthz", "--timeout", "1")
    assert nobody.returncode == 1
    assert nobody.stdout.startswith("unhealthy:")


def test_healthcheck_pings_redis(valkey: ServerProcess) -> None:
    """``--redis`` is healthy while the server at REDIS_URL answers PING, else not."""
    assert healthcheck("--redis", env={"REDIS_URL": valkey.url}).returncode == 0
    down = healthcheck(
        "--redis", "--timeout", "1", env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    )
    assert down.returncode == 1
    assert "unhealthy" in down.stdout
    assert healthcheck("--redis", env={}).returncode == 1


# -- docker-compose.yml ------------------------------------------------------------------


def test_vendored_compose_schema_is_the_upstream_file() -> None:
    """tests/data/compose-spec.json is byte for byte the version its README names."""
    readme = (ROOT / "tests" / "data" / "README.md").read_text()
    recorded = re.search(r"sha256 \| `([0-9a-f]{64})`", readme)
    assert recorded is not None
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == recorded.group(1)


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    """docker-compose.yml validates against the Compose Specification's JSON schema."""
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = [
        f"{e.json_path}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(compose)
    ]
    assert errors == []


def test_the_schema_rejects_invalid_compose_files(compose: dict[str, Any]) -> None:
    """The validation is not vacuous: a misspelt key or a bad condition is an error."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    misspelt = json.loads(json.dumps(compose))
    misspelt["services"]["api"]["healthchek"] = {}
    assert not validator.is_valid(misspelt)
    bad_condition = json.loads(json.dumps(compose))
    bad_condition["services"]["api"]["depends_on"]["redis"]["condition"] = "service_ready"
    assert not validator.is_valid(bad_condition)


def test_every_axon_command_in_compose_is_a_real_command(compose: dict[str, Any]) -> None:
    """Each service's `axon ...` parses with the real CLI parser; the roles are all there."""
    parser = cli._parser()
    roles = []
    for name, service in axon_services(compose).items():
        invocations = axon_invocations(service)
        assert invocations, f"service {name} runs no axon command"
        for argv in invocations:
            try:
                parsed = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"service {name}: `axon {shlex.join(argv)}` does not parse")
            assert parsed.command is not None, f"service {name}: no subcommand"
        roles.append(role_of(service))
    assert set(ROLES) <= set(roles)


def test_every_variable_compose_sets_is_one_axon_reads(
    compose: dict[str, Any], dockerfile: list[Instruction]
) -> None:
    """AXON_* and REDIS_URL names in compose and the image are read by axon's code (no
    typos that would silently leave a default in place)."""
    source = "\n".join(p.read_text() for p in (ROOT / "axon").rglob("*.py"))
    names = set(final_stage_env(dockerfile))
    for service in axon_services(compose).values():
        names |= set(service.get("environment", {}))
        for argv in axon_invocations(service):
            names |= set(re.findall(r"\$\{?(AXON_\w+)", " ".join(argv)))
    for name in sorted(names):
        if name.startswith("AXON_") or name == "REDIS_URL":
            assert f'"{name}"' in source, f"{name} is not read anywhere in axon/"


def test_prometheus_scrapes_every_axon_role_where_it_listens(
    compose: dict[str, Any], prometheus: dict[str, Any], dockerfile: list[Instruction]
) -> None:
    """Each scrape target is a compose service and a port that service listens on, and
    every API, worker and compactor service is scraped."""
    services = compose["services"]
    image_env = final_stage_env(dockerfile)
    scraped = set()
    for job in prometheus["scrape_configs"]:
        targets = [
            (name, int(sd["port"])) for sd in job.get("dns_sd_configs", []) for name in sd["names"]
        ]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.append((host, int(port)))
        for host, port in targets:
            if host == "localhost" and job["job_name"] == "prometheus":
                continue
            assert host in services, f"job {job['job_name']}: no service {host}"
            assert port in listening_ports(services[host], image_env), (
                f"job {job['job_name']}: service {host} does not listen on {port}"
            )
            scraped.add(host)
    running = {name for name, s in axon_services(compose).items() if role_of(s)}
    assert running <= scraped, f"not scraped: {running - scraped}"


def test_axon_services_publish_and_probe_the_ports_they_listen_on(
    compose: dict[str, Any], dockerfile: list[Instruction]
) -> None:
    """Published or exposed ports and healthcheck URLs match each role's listening port."""
    image_env = final_stage_env(dockerfile)
    for name, service in axon_services(compose).items():
        role = role_of(service)
        if role is None:
            continue
        listening = listening_ports(service, image_env)
        assert listening, f"{name}: listens on no known port"
        for mapping in service.get("ports", []):
            target = int(str(mapping).rsplit(":", 1)[-1].split("/")[0])
            assert target in listening, f"{name}: publishes {target}"
        for exposed in service.get("expose", []):
            assert int(exposed) in listening, f"{name}: exposes {exposed}"
        test = service.get("healthcheck", {}).get("test")
        assert test is not None, f"{name}: no healthcheck"
        assert test[:3] == ["CMD", "python", HEALTHCHECK_IN_IMAGE], name
        probe = test[3]
        if probe.startswith("/"):
            assert int(image_env["AXON_API_PORT"]) in listening
        elif probe != "--redis":
            port = re.match(r"http://127\.0\.0\.1:(\d+)/", probe)
            assert port is not None, f"{name}: {probe}"
            assert int(port.group(1)) in listening, f"{name}: {probe}"


def test_archive_and_receipt_key_live_on_shared_named_volumes(compose: dict[str, Any]) -> None:
    """API servers and the compactor mount the same archive volume at AXON_ARCHIVE_DIR (only
    the compactor writes), and the key volume at the receipt key's directory."""
    volumes = set(compose["volumes"])
    services = axon_services(compose)

    def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
        out = {}
        for spec in service.get("volumes", []):
            source, target, *mode = spec.split(":")
            out[target] = (source, mode == ["ro"])
        return out

    by_role = {role_of(s) or name: s for name, s in services.items()}
    for role in ("serve", "compactor"):
        env = by_role[role]["environment"]
        archive = mounts(by_role[role]).get(env["AXON_ARCHIVE_DIR"])
        assert archive is not None, f"{role}: nothing mounted at AXON_ARCHIVE_DIR"
        assert archive[0] in volumes
        assert archive[1] == (role == "serve")
        key_dir = str(Path(env["AXON_RECEIPT_KEY_FILE"]).parent)
        key = mounts(by_role[role]).get(key_dir)
        assert key is not None, f"{role}: the receipt key's directory is not mounted"
        assert key[0] in volumes
        assert key[1], f"{role}: mounts the receipt key read-write"
    assert (
        mounts(by_role["serve"])[by_role["serve"]["environment"]["AXON_ARCHIVE_DIR"]][0]
        == mounts(by_role["compactor"])[by_role["compactor"]["environment"]["AXON_ARCHIVE_DIR"]][0]
    )
    (init,) = [
        s for s in services.values() if any("receipt-init" in a for a in axon_invocations(s))
    ]
    key_dir = str(Path(init["environment"]["AXON_RECEIPT_KEY_FILE"]).parent)
    assert mounts(init)[key_dir] == (mounts(by_role["compactor"])[key_dir][0], False)
    assert init["restart"] == "no"


def test_redis_persists_with_aof_everysec_on_a_volume(compose: dict[str, Any]) -> None:
    """Redis runs with appendonly yes, appendfsync everysec and noeviction, data on a volume."""
    redis = compose["services"]["redis"]
    command = [str(x) for x in redis["command"]]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    source, target = redis["volumes"][0].split(":")[:2]
    assert target == options["--dir"]
    assert source in compose["volumes"]
    host = next(iter(axon_services(compose).values()))["environment"]["REDIS_URL"]
    assert host.startswith("redis://redis:6379/")


def test_depends_on_waits_for_what_each_service_needs(
    compose: dict[str, Any], dockerfile: list[Instruction]
) -> None:
    """Every dependency exists; `service_healthy` ones have a healthcheck; one-shot ones
    do not restart; every long-running Axon service waits for a healthy Redis."""
    services = compose["services"]
    image_has_healthcheck = any(i.keyword == "HEALTHCHECK" for i in stages(dockerfile)[-1])
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on missing {dependency}"
            target = services[dependency]
            if rule["condition"] == "service_healthy":
                own = target.get("healthcheck", {})
                assert not own.get("disable"), f"{dependency} has its healthcheck disabled"
                assert "test" in own or (
                    dependency in axon_services(compose) and image_has_healthcheck
                )
            if rule["condition"] == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dependency} would restart"
    for name, service in axon_services(compose).items():
        if role_of(service):
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_axon_services_get_time_to_drain_on_stop(compose: dict[str, Any]) -> None:
    """stop_grace_period exceeds AXON_SHUTDOWN_GRACE_S, so workers hand tasks back
    and API servers drain streams before Docker's SIGKILL."""
    from axon.settings import Settings

    grace = Settings().shutdown_grace_s
    for name, service in axon_services(compose).items():
        if role_of(service):
            assert seconds(service["stop_grace_period"]) > grace + 5, name


# -- the Compose services, run as processes ----------------------------------------------


def service_env(
    service: dict[str, Any], image_env: dict[str, str], overrides: dict[str, str]
) -> dict[str, str]:
    """The environment a service's container gets, with ``overrides`` for this machine."""
    env = {k: v for k, v in image_env.items() if k != "PATH"}
    env.update({k: str(v) for k, v in service.get("environment", {}).items()})
    env.update(overrides)
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return env


def wait_healthy(test: list[str], env: dict[str, str], proc: subprocess.Popen[bytes]) -> None:
    """Run a compose healthcheck test (CMD form) until it passes, as Docker would."""
    assert test[0] == "CMD"
    argv = [sys.executable if test[1] == "python" else test[1], *test[2:]]
    argv = [
        str(ROOT / "deploy" / "healthcheck.py") if a == HEALTHCHECK_IN_IMAGE else a for a in argv
    ]
    deadline = time.monotonic() + 40
    while True:
        assert proc.poll() is None, f"{test}: the process exited with {proc.returncode}"
        if subprocess.run(argv, env=env, capture_output=True, check=False).returncode == 0:
            return
        assert time.monotonic() < deadline, f"{test} never passed"
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_compose_services_start_pass_their_healthchecks_and_stop_cleanly(
    compose: dict[str, Any], dockerfile: list[Instruction], valkey: ServerProcess, tmp_path: Path
) -> None:
    """Without Docker: the receipt-key script creates the key once, then each role runs its
    compose command and environment (Redis, paths and ports pointed at this machine),
    passes its compose healthcheck, writes nothing outside its volumes, and exits 0 on
    SIGTERM."""
    image_env = final_stage_env(dockerfile)
    services = axon_services(compose)
    prefix = f"deploy{os.getpid()}"
    data = tmp_path / "var-lib-axon"
    (data / "archive").mkdir(parents=True)
    (data / "keys").mkdir(mode=0o700)

    def rebase(value: str) -> str:
        return value.replace("/var/lib/axon", str(data))

    base = {
        "REDIS_URL": valkey.url,
        "AXON_KEY_PREFIX": prefix,
        "AXON_API_HOST": "127.0.0.1",
        "AXON_METRICS_HOST": "127.0.0.1",
        "AXON_DATA_DIR": str(data),
        "HOME": str(data),  # the axon user's home in the image
    }
    (init,) = [
        s for s in services.values() if any("receipt-init" in a for a in axon_invocations(s))
    ]
    init_env = service_env(init, image_env, base)
    init_env = {k: rebase(v) for k, v in init_env.items()}
    script = interpolate(init["command"][0])
    for attempt in (1, 2):  # the second run finds the key and does nothing
        done = subprocess.run(
            ["/bin/sh", "-c", script], env=init_env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, (attempt, done.stderr)
    key_file = Path(init_env["AXON_RECEIPT_KEY_FILE"])
    assert key_file.stat().st_mode & 0o777 == 0o600
    first_key = key_file.read_text()

    running: list[tuple[str, subprocess.Popen[bytes], list[str], dict[str, str]]] = []
    try:
        for name, service in services.items():
            role = role_of(service)
            if role is None:
                continue
            port = str(free_port())
            (listening,) = listening_ports(service, image_env)
            env = service_env(service, image_env, {**base, ROLE_PORT_VARIABLE[role]: port})
            env = {k: rebase(v) for k, v in env.items()}
            test = [
                x.replace(f":{listening}/", f":{port}/") for x in service["healthcheck"]["test"]
            ]
            argv = ["axon", *axon_invocations(service)[0]]
            with (tmp_path / f"{name}.log").open("wb") as log:  # the child keeps its own copy
                proc = subprocess.Popen(
                    argv, env=env, cwd=data, stdout=subprocess.DEVNULL, stderr=log
                )
            running.append((name, proc, test, env))
        assert {role_of(services[name]) for name, *_ in running} == set(ROLES)
        for _name, proc, test, env in running:
            wait_healthy(test, env, proc)
    finally:
        for _, proc, _, _ in running:
            proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc, _, _ in running:
            try:
                codes[name] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
    logs = {n: (tmp_path / f"{n}.log").read_text()[-2000:] for n, *_ in running}
    assert all(code == 0 for code in codes.values()), (codes, logs)
    assert key_file.read_text() == first_key
    # Compose mounts the root filesystem read-only: nothing may be written outside the volumes.
    written = [p for p in data.rglob("*") if p.parts[len(data.parts)] not in ("archive", "keys")]
    assert written == []
