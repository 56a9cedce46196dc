#!/usr/bin/env bash
# Migrate, seed the demo on the first simulated run, start the simulator when
# there is no OPENAI_API_KEY, then serve on 127.0.0.1:$PORT (8000).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
var="${VAR_DIR:-var}"
port="${PORT:-8000}"
mkdir -p "$var"

$PY manage.py migrate --noinput -v0

pids=""
trap 'kill $pids 2>/dev/null || true' EXIT INT TERM

if [ -z "${OPENAI_API_KEY:-}" ]; then
    sim_port="${SIMULATOR_PORT:-8100}"
    $PY -m realtime_sim --host 127.0.0.1 --port "$sim_port" &
    pids="$pids $!"
    if [ ! -f "$var/demo-seeded" ]; then
        password="$($PY -c 'import secrets; print(secrets.token_urlsafe(12))')"
        $PY manage.py seed_demo --password "$password"
        touch "$var/demo-seeded"
        echo
        echo "Demo logins (password for all: $password):"
        echo "  alice (Demo team admin), bob (Demo member), erin (Demo read-only),"
        echo "  dave (Other team admin), admin (staff superuser)"
        echo "Run 'make run' again later: the demo is kept; reset passwords with"
        echo "  .venv/bin/python manage.py seed_demo --password NEW"
        echo
    fi
    echo "Upstream: the local realtime simulator on 127.0.0.1:$sim_port (no OPENAI_API_KEY set)"
else
    echo "Upstream: ${OPENAI_BASE_URL:-https://api.openai.com}"
fi

# The sideband worker verifies usage and ends calls whose page vanished. On one machine (no
# REDIS_URL) the server runs it itself, so that its pages hear of verified usage; with Redis it
# is a process of its own, as it would be past one machine. The settings decide which.
worker_mode="$($PY -c 'import os; os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceproject.settings")
from django.conf import settings; print(settings.SIDEBAND_WORKER)')"
if [ "$worker_mode" = external ]; then
    $PY manage.py sideband_worker &
    pids="$pids $!"
fi

echo "Serving on http://127.0.0.1:$port (sideband worker: $worker_mode)"
# uvicorn serves HTTP and WebSockets; voiceproject.asgi routes the sockets through Channels.
.venv/bin/uvicorn --host 127.0.0.1 --port "$port" --lifespan off --no-access-log --no-proxy-headers \
    --timeout-graceful-shutdown 5 \
    voiceproject.asgi:application
