// The spend dashboard: the server renders the figures; this keeps them current.
// On every (re)connect of /ws/dashboard/ it reads the figures once (reports may
// have landed while no socket listened), and again when the server says its live
// pushes were interrupted (dashboard.resync, after a Redis outage); after that each
// spend.update is a delta applied here, with no request to the server.
import { LiveSocket } from './dashboard/live_socket.js';
import { applyUpdate } from './dashboard/figures.js';
import { renderFigures, when } from './dashboard/render.js';

const live = JSON.parse(document.getElementById('dashboard-live').textContent);
const status = document.getElementById('live-status');
const RENDER_GAP_MS = 100;

let data = null; // the figures as the page shows them
let buffered = null; // updates that arrived while the figures were being read
let renderTimer = null;
// For tests and the curious: figure reads, and updates applied since the last read.
const counters = { reads: 0, applied: 0 };
window.spendDashboard = counters;

function setStatus(text) { status.textContent = text; }

function scheduleRender() {
  if (renderTimer) return;
  renderTimer = setTimeout(() => {
    renderTimer = null;
    renderFigures(data);
    setStatus(`Live: figures as of ${when(new Date())}.`);
  }, RENDER_GAP_MS);
}

function apply(update) {
  // Records up to last_record are in the figures read; their updates may still be on the way.
  // (An update without a record, such as a conversation's end, only replaces its row.)
  if (update.record_id != null && update.record_id <= data.last_record) return;
  // A range that ends today (none asked for) moved on at midnight: read it again, this update with it.
  if (data.rolling && (update.changes || []).some((change) => change.day > data.end)) {
    resync();
    return;
  }
  if (applyUpdate(data, update)) {
    counters.applied += 1;
    scheduleRender();
  }
}

async function read() {
  buffered = [];
  try {
    const response = await fetch(live.json_url, { headers: { Accept: 'application/json' } });
    const type = response.headers.get('Content-Type') || '';
    if (response.redirected || !type.startsWith('application/json')) {
      setStatus('You are signed out: reload the page to sign in again.');
      return;
    }
    const fresh = await response.json();
    if (!response.ok) {
      setStatus(`The figures could not be read: ${fresh.error ? fresh.error.message : response.status}`);
      return;
    }
    data = fresh;
    counters.reads += 1;
    counters.applied = 0;
    // What arrived during the read and is not already in it.
    for (const update of buffered) apply(update);
    scheduleRender();
  } catch {
    setStatus('The figures could not be read (network); they will be on the next reconnect.');
  } finally {
    buffered = null;
  }
}

// One read at a time; a resync asked for during a read reads again after it.
let reading = null;
let readAgain = false;
function resync() {
  if (reading) {
    readAgain = true;
    return reading;
  }
  reading = read().finally(() => {
    reading = null;
    if (readAgain) {
      readAgain = false;
      resync();
    }
  });
  return reading;
}

const socket = new LiveSocket(live.ws_path, {
  onOpen: resync,
  onMessage: (message) => {
    if (message.type === 'dashboard.resync') {
      resync();
      return;
    }
    if (message.type !== 'spend.update') return;
    if (buffered) buffered.push(message);
    else if (data) apply(message);
  },
  onStateChange: (state, delay) => {
    if (state === 'closed') setStatus(`Live updates paused; reconnecting in ${Math.ceil(delay / 1000)} s.`);
    else setStatus('Live: connected.');
  },
});
socket.start();
