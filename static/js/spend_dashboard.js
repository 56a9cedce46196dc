// The spend dashboard: the server renders the figures; this keeps them current.
// Each spend.update from /ws/dashboard/ triggers a re-read of the figures from
// the server (the database is the truth, and group messages can be dropped),
// at most once a second however fast reports arrive.
import { LiveSocket } from './dashboard/live_socket.js';
import { renderFigures } from './dashboard/render.js';

const live = JSON.parse(document.getElementById('dashboard-live').textContent);
const status = document.getElementById('live-status');
const MIN_GAP_MS = 1000;

let timer = null;
let lastStarted = 0;
let running = null;

function setStatus(text) { status.textContent = text; }

async function refresh() {
  try {
    const response = await fetch(live.json_url, { headers: { Accept: 'application/json' } });
    const type = response.headers.get('Content-Type') || '';
    if (response.redirected || !type.startsWith('application/json')) {
      setStatus('You are signed out: reload the page to sign in again.');
      return;
    }
    const data = await response.json();
    if (!response.ok) {
      setStatus(`The figures could not be refreshed: ${data.error ? data.error.message : response.status}`);
      return;
    }
    renderFigures(data);
    setStatus(`Live: figures as of ${new Date().toLocaleTimeString()}.`);
  } catch {
    setStatus('The figures could not be refreshed (network); they will be on the next update.');
  }
}

// Coalesces bursts: one refresh pending at a time, started no sooner than
// MIN_GAP_MS after the previous one and never beside one still running.
function requestRefresh() {
  if (timer) return;
  const wait = Math.max(0, lastStarted + MIN_GAP_MS - Date.now());
  timer = setTimeout(async () => {
    if (running) await running;
    timer = null;
    lastStarted = Date.now();
    running = refresh().finally(() => { running = null; });
  }, wait);
}

const socket = new LiveSocket(live.ws_path, {
  // Reports may have landed while no socket listened: read everything again.
  onOpen: requestRefresh,
  onMessage: (message) => { if (message.type === 'spend.update') requestRefresh(); },
  onStateChange: (state, delay) => {
    if (state === 'closed') setStatus(`Live updates paused; reconnecting in ${Math.ceil(delay / 1000)} s.`);
    else setStatus('Live: connected.');
  },
});
socket.start();
