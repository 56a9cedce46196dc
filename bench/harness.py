"""Start the service and the simulator as subprocesses on loopback for a benchmark."""

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench-password-123"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def post_json(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=30).read()


@contextlib.contextmanager
def simulator():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "realtime_sim", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env={**os.environ, "SIM_API_KEY": "sk-sim-bench"}, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/_sim/calls", proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


POSTGRES_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
REDIS_BASE_URL = "redis://127.0.0.1:6379"
# A Redis database number of its own, flushed before and after a run.
REDIS_DB = 11


@contextlib.contextmanager
def _postgres_database():
    """A fresh PostgreSQL database on 127.0.0.1 for one run, dropped afterwards."""
    import psycopg

    name = f"voice_run_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _flush_redis():
    import redis

    redis.Redis.from_url(f"{REDIS_BASE_URL}/{REDIS_DB}", socket_timeout=5).flushdb()


def server_log():
    """Where the servers' own log goes: nowhere, or the file BENCH_SERVER_LOG names (to see why a figure is odd)."""
    path = os.environ.get("BENCH_SERVER_LOG")
    return open(path, "a") if path else subprocess.DEVNULL


class Topology:
    """Running server processes (and maybe sideband workers) sharing one database."""

    def __init__(self, bases, env):
        self.bases = bases
        self.env = env
        self.servers = []
        self.workers = []

    def manage(self, *args, **kwargs):
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True, **kwargs)

    def start_worker(self, poll=0.2):
        """One more `manage.py sideband_worker` process, looking at the database every `poll` seconds;
        it names itself host:pid."""
        proc = subprocess.Popen([sys.executable, "manage.py", "sideband_worker", "--poll", str(poll)],
                                cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL)
        self.workers.append(proc)
        return proc

    def sql(self, query, params=()):
        """A query against the topology's PostgreSQL database."""
        import psycopg

        with psycopg.connect(self.env["DATABASE_URL"], autocommit=True, connect_timeout=5) as db:
            cursor = db.execute(query, params)
            return cursor.fetchall() if cursor.description else []


def server_command(port, server=None):
    """The ASGI server's command line on 127.0.0.1:`port`: uvicorn (as `make run`), or daphne to compare."""
    server = server or os.environ.get("BENCH_SERVER", "uvicorn")
    bin_dir = Path(sys.executable).parent
    if server == "uvicorn":
        return [str(bin_dir / "uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                "--lifespan", "off", "--no-proxy-headers", "--timeout-graceful-shutdown", "5",
                "voiceproject.asgi:application"]
    if server == "daphne":
        return [str(bin_dir / "daphne"), "-b", "127.0.0.1", "-p", str(port), "voiceproject.asgi:application"]
    raise ValueError(f"unknown ASGI server {server!r}")


@contextlib.contextmanager
def topology(simulator_url, users, processes=1, shared=False, workers=0, extra_env=None, setup="", redis_url=None,
             server=None):
    """`processes` ASGI servers (`server`: uvicorn or daphne); with `shared`, on PostgreSQL and Redis and
    `workers` sideband worker processes (else SQLite and the in-memory layer, with the worker inside the
    one server)."""
    with contextlib.ExitStack() as stack:
        var = stack.enter_context(tempfile.TemporaryDirectory())
        env = {
            **os.environ, "VAR_DIR": var, "SECRET_KEY": "bench-secret-key", "OPENAI_API_KEY": "",
            "SIM_API_KEY": "sk-sim-bench", "OPENAI_BASE_URL": simulator_url, "MINT_RATE_LIMIT": "1000000/m",
            "DATABASE_URL": "", "REDIS_URL": "", **(extra_env or {}),
        }
        if shared:
            env["DATABASE_URL"] = stack.enter_context(_postgres_database())
            env["SIDEBAND_WORKER"] = "external"
            if redis_url:  # a Redis of the caller's own (a test that stops it)
                env["REDIS_URL"] = redis_url
            else:
                env["REDIS_URL"] = f"{REDIS_BASE_URL}/{REDIS_DB}"
                _flush_redis()
                stack.callback(_flush_redis)
        top = Topology([], env)
        top.manage("migrate", "--noinput", "-v0")
        create = (
            "from django.contrib.auth import get_user_model; from teams_app.models import Team, Membership\n"
            "t = Team.objects.create(name='Bench'); U = get_user_model()\n"
            f"for i in range({users}):\n"
            f"    Membership.objects.create(team=t, user=U.objects.create_user(f'bench{{i}}', password='{PASSWORD}'))\n"
            "U.objects.create_superuser('benchstaff', password='" + PASSWORD + "')\n"
        )
        top.manage("shell", "-c", create + setup, stdout=subprocess.DEVNULL)
        procs = []
        for _ in range(processes):
            port = free_port()
            procs.append(subprocess.Popen(
                server_command(port, server),
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=server_log(),
            ))
            top.bases.append(f"http://127.0.0.1:{port}")
        top.servers = list(procs)
        for _ in range(workers):
            top.start_worker()
        try:
            for base, proc in zip(top.bases, procs):
                wait_for(f"{base}/healthz", proc)
            yield top
        finally:
            for proc in procs + top.workers:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs + top.workers:
                try:
                    proc.wait(20)  # uvicorn gives open sockets 5 s to close
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


@contextlib.contextmanager
def service(simulator_url, users, extra_env=None, setup="", server=None):
    """One ASGI server on a fresh SQLite database with `users` bench users; yields the topology."""
    with topology(simulator_url, users, extra_env=extra_env, setup=setup, server=server) as top:
        yield top


def percentile(values, p):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


async def signed_in_client(base, username, password=PASSWORD):
    """An httpx client signed in through the login form, sending the CSRF token like the page does."""
    import httpx

    client = httpx.AsyncClient(base_url=base, timeout=30)
    page = await client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = await client.post("/accounts/login/", data={"username": username, "password": password,
                                                           "csrfmiddlewaretoken": token})
    assert response.status_code == 302, response.status_code
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


def cpu_seconds(pid):
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks():
    """(busy, stolen) CPU ticks of this machine so far, from /proc/stat: busy is the time its cores ran
    or wanted to run (user, nice, system, irq, softirq and steal; guest time is inside user and nice),
    stolen what the hypervisor gave to other machines meanwhile ("steal")."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in stat.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal, steal


def steal_share(before, after):
    """The share of the machine's busy CPU time that was stolen between two machine_ticks() readings; a
    level run while it is high may cost more CPU per request (cold caches, a contended host)."""
    busy = after[0] - before[0]
    return (after[1] - before[1]) / busy if busy else 0.0


CHROMIUM = "/usr/bin/chromium"


def chromium_args(fake_microphone_wav=None):
    """Headless Chromium for real WebRTC on loopback only (shared/WEBRTC_TESTING.md)."""
    features = ",".join([*playwright_disabled_features(), "WebRtcHideLocalIpsWithMdns"])
    args = [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",
        # Chromium keeps only the last --disable-features: this one repeats Playwright's own list.
        f"--disable-features={features}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ]
    if fake_microphone_wav:
        args.append(f"--use-file-for-fake-audio-capture={fake_microphone_wav}")
    return args


def playwright_disabled_features():
    """Playwright's own --disable-features list: Chromium keeps only the last switch."""
    import playwright

    bundle = Path(playwright.__file__).parent / "driver/package/lib/coreBundle.js"
    match = re.search(r"disabledFeatures = \[(.*?)\]\.filter", bundle.read_text(), re.S)
    assert match, f"cannot find Playwright's disabledFeatures list in {bundle}"
    return re.findall(r'"([A-Za-z0-9]+)"', match.group(1))


def wait_js(page, expression, timeout=15_000, interval=0.1):
    """Wait until a JavaScript expression is truthy in the page. Playwright's wait_for_function
    evaluates its string with eval(), which the pages' Content Security Policy forbids; this asks
    through the DevTools protocol instead, which the policy does not govern."""
    deadline = time.monotonic() + timeout / 1000
    while True:
        value = page.evaluate(f"() => {{ try {{ return ({expression}); }} catch {{ return false; }} }}")
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(interval)


class Http1:
    """One keep-alive HTTP/1.1 connection on asyncio streams: the load generator's own CPU per request
    stays a small part of what the servers spend (httpx spends about 2 ms)."""

    def __init__(self, base, headers=None):
        self.host, self.port = base.removeprefix("http://").split(":")
        self.headers = {"Host": f"{self.host}:{self.port}", **(headers or {})}
        self.reader = self.writer = None

    async def get(self, path):
        return await self.post(path, None)

    async def post(self, path, body, content_type="application/json"):
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        if body is None:
            request = f"GET {path} HTTP/1.1\r\n{head}\r\n".encode()
        else:
            request = (f"POST {path} HTTP/1.1\r\n{head}Content-Type: {content_type}\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        reused = self.writer is not None
        if not reused:
            self.reader, self.writer = await asyncio.open_connection(self.host, int(self.port))
        self.writer.write(request)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError):
            if not reused:
                raise
            # The server closed the idle connection (keep-alive timeout): once more on a new one.
            await self.close()
            return await self.post(path, body, content_type)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if fields.get("transfer-encoding") == "chunked":
            content = b""
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                content += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        else:
            content = await self.reader.readexactly(int(fields.get("content-length", 0)))
        if fields.get("connection") == "close":
            await self.close()
        return status, content

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def signed_in_http1(base, username):
    """An Http1 connection carrying the session and CSRF cookies of a sign-in through the login form."""
    signed_in = await signed_in_client(base, username)
    cookies = "; ".join(f"{k}={v}" for k, v in signed_in.cookies.items())
    await signed_in.aclose()
    return Http1(base, {"Cookie": cookies, "X-CSRFToken": signed_in.cookies["csrftoken"]})
