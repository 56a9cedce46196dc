#!/usr/bin/env bash
# Every test: unit, view, consumer and simulator tests; then the real-browser
# tests inside a loopback-only network namespace; then the scale-out tests
# against the PostgreSQL and Redis on 127.0.0.1 (outside the namespace); then
# the search tests once more with PostgreSQL as the database.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTEST=(.venv/bin/python -m pytest)

echo "== unit, view, consumer and simulator tests"
"${PYTEST[@]}" -m "not browser and not scaleout"

echo "== browser tests (headless Chromium against the simulator)"
if unshare -n true 2>/dev/null; then
    # Nothing but loopback exists in this namespace, so nothing can leave the machine.
    unshare -n -- sh -c 'ip link set lo up && exec "$@"' sh "${PYTEST[@]}" -m browser
elif [ -n "${CI:-}" ]; then
    echo "cannot create a network namespace (unshare -n): the browser tests must run isolated on CI" >&2
    exit 1
else
    echo "warning: no network namespace (unshare -n failed); running the browser tests with the loopback guards only" >&2
    "${PYTEST[@]}" -m browser
fi

echo "== scale-out tests (two server processes on the machine's PostgreSQL and Redis)"
"${PYTEST[@]}" -m scaleout

echo "== search, the tool, hostile input, the running totals, the compiled reads and the sweep again, on the machine's PostgreSQL"
# pytest-django makes (and drops) a test database beside `postgres`; no server there is a failure.
DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL= "${PYTEST[@]}" \
    tests/test_search.py tests/test_tools.py tests/test_passages.py tests/test_hardening.py tests/test_running_totals.py \
    tests/test_prepared.py tests/test_sweep.py \
    tests/test_usage_consumer.py::test_of_two_conversations_started_at_once_the_second_page_to_connect_is_ended
