// The voice session page: start a session, talk, see the transcript and cost, stop.
import { CallError, RealtimeCall } from './realtime/call.js';
import { UsageSocket } from './realtime/usage_socket.js';
import { DocumentPicker } from './document_picker.js';

const config = JSON.parse(document.getElementById('voice-config').textContent);
const csrfToken = document.querySelector('input[name=csrfmiddlewaretoken]').value;
const $ = (id) => document.getElementById(id);
const ui = {
  model: $('model'), voice: $('voice'), turn: $('turn-detection'), docText: $('document-text'),
  budget: $('context-budget'), start: $('start'), stop: $('stop'), mute: $('mute'),
  talk: $('talk'), playAudio: $('play-audio'), status: $('status'), error: $('error'),
  vad: $('vad-indicator'), vadLabel: $('vad-label'), transcript: $('transcript'),
  inputTokens: $('input-tokens'), cachedTokens: $('cached-tokens'), outputTokens: $('output-tokens'),
  cost: $('session-cost'), audio: $('remote-audio'),
};

let state = null;  // { session, stream, call, socket, pushToTalk, talking }

// ---- setup form ----
for (const m of config.models) ui.model.add(new Option(m.id, m.id, false, m.id === config.defaults.model));
for (const v of config.voices) ui.voice.add(new Option(v, v, false, v === config.defaults.voice));
ui.turn.value = config.defaults.turn_detection;
if (config.budget_remaining_usd !== null) {
  const remaining = $('budget-remaining');
  remaining.textContent = `Spending left this month under your budget: $${Number(config.budget_remaining_usd).toFixed(4)}.`;
  remaining.hidden = false;
}

function money(value) {
  return value > 0 && value < 0.0001 ? 'under $0.0001' : `$${value.toFixed(4)}`;
}

// What the chosen context costs, truthfully: it is billed again with every
// answer, in full on the first and mostly at the cached rate after that.
function updateEstimate() {
  const model = config.models.find((m) => m.id === ui.model.value);
  const pasted = ui.docText.value.trim();
  const pastedTokens = pasted ? Math.ceil(pasted.length / 4) : 0;  // an estimate; the server counts exactly
  const tokens = picker.tokens + pastedTokens;
  if (!tokens) { ui.budget.textContent = ''; ui.start.disabled = !!state; return; }
  const first = (tokens * Number(model.text_input_per_million)) / 1e6;
  const later = (tokens * Number(model.text_cached_input_per_million)) / 1e6;
  const over = tokens > model.document_budget;
  ui.budget.replaceChildren();
  const total = document.createElement('span');
  total.className = over ? 'over' : '';
  total.textContent = `${pastedTokens ? 'About ' : ''}${tokens.toLocaleString()} tokens of documents; `
    + `${model.id} allows ${model.document_budget.toLocaleString()}${over ? ' — too many, remove some' : ''}. `;
  const cost = document.createElement('span');
  cost.textContent = `They are billed again with every answer: ${money(first)} as new input on the first answer, `
    + `then about ${money(later)} per answer while they stay cached.`;
  ui.budget.append(total, cost);
  ui.start.disabled = over || !!state;
}
const picker = new DocumentPicker({
  search: $('doc-search'), results: $('doc-results'), chosen: $('doc-chosen'), onChange: updateEstimate,
});
ui.docText.addEventListener('input', updateEstimate);
ui.model.addEventListener('change', updateEstimate);

// ---- messages ----
function setStatus(text) { ui.status.textContent = text; }
function showError(text) { ui.error.textContent = text; ui.error.hidden = false; }
function clearError() { ui.error.textContent = ''; ui.error.hidden = true; }
function setActivity(kind, label) { ui.vad.dataset.state = kind; ui.vadLabel.textContent = label; }

const API_MESSAGES = {
  not_authenticated: 'Your sign-in has expired. Reload the page and sign in again.',
  csrf_failed: 'The page is out of date. Reload it and try again.',
  budget_exceeded: 'The spending limit has been reached, so no new session can start.',
};

async function api(path, body) {
  let response;
  try {
    response = await fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-CSRFToken': csrfToken },
      body: JSON.stringify(body || {}),
      credentials: 'same-origin',
    });
  } catch {
    throw new CallError('network', 'Could not reach this server. Check your connection.');
  }
  if (response.status === 204) return null;
  let data = null;
  try { data = await response.json(); } catch { /* no JSON body */ }
  if (!response.ok) {
    const code = data?.error?.code || `http_${response.status}`;
    let message = API_MESSAGES[code] || data?.error?.message || `The server answered HTTP ${response.status}.`;
    if (code === 'rate_limited') message = `Too many sessions started. Try again in ${response.headers.get('Retry-After') || 'a few'} seconds.`;
    throw new CallError(code, message);
  }
  return data;
}

// ---- transcript ----
function transcriptEntry(itemId, role) {
  let li = ui.transcript.querySelector(`li[data-item-id="${CSS.escape(itemId)}"]`);
  if (!li) {
    li = document.createElement('li');
    li.dataset.itemId = itemId;
    li.dataset.role = role;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = role === 'user' ? 'You:' : 'Assistant:';
    const text = document.createElement('span');
    text.className = 'text';
    li.append(who, text);
    ui.transcript.append(li);
  }
  return li.querySelector('.text');
}

function appendTranscript(itemId, role, delta) {
  transcriptEntry(itemId, role).textContent += delta;
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

function finishTranscript(itemId, role, text) {
  transcriptEntry(itemId, role).textContent = text;
  if (state && text) state.socket.reportTranscript(itemId, role, text);
}

// ---- realtime events ----
function onRealtimeEvent(event) {
  switch (event.type) {
    case 'session.created':
      setStatus('Connected. ' + (state.pushToTalk ? 'Hold Talk while you speak.' : 'Speak whenever you like.'));
      setActivity('listening', 'Listening');
      break;
    case 'input_audio_buffer.speech_started':
      setActivity('user', 'You are speaking');
      break;
    case 'input_audio_buffer.speech_stopped':
      setActivity('listening', 'Thinking');
      break;
    case 'output_audio_buffer.started':
      setActivity('assistant', 'Assistant speaking');
      break;
    case 'output_audio_buffer.stopped':
    case 'output_audio_buffer.cleared':
      setActivity('listening', 'Listening');
      break;
    case 'conversation.item.input_audio_transcription.delta':
      appendTranscript(event.item_id, 'user', event.delta || '');
      break;
    case 'conversation.item.input_audio_transcription.completed':
      finishTranscript(event.item_id, 'user', event.transcript || '');
      break;
    case 'response.output_audio_transcript.delta':
    case 'response.output_text.delta':
      appendTranscript(event.item_id, 'assistant', event.delta || '');
      break;
    case 'response.output_audio_transcript.done':
      finishTranscript(event.item_id, 'assistant', event.transcript || '');
      break;
    case 'response.output_text.done':
      finishTranscript(event.item_id, 'assistant', event.text || '');
      break;
    case 'response.created':
      state.responding = true;
      break;
    case 'response.done':
      state.responding = false;
      if (event.response?.id && event.response.usage) state.socket.reportUsage(event.response.id, event.response.usage);
      break;
    case 'error':
      setStatus(`The model reported a problem: ${event.error?.message || 'unknown error'}`);
      break;
    default:
      break;
  }
}

function onAck(ack) {
  const totals = ack.session;
  ui.inputTokens.textContent = totals.input_tokens.toLocaleString();
  ui.cachedTokens.textContent = totals.cached_tokens.toLocaleString();
  ui.outputTokens.textContent = totals.output_tokens.toLocaleString();
  ui.cost.textContent = `$${Number(totals.cost_usd).toFixed(4)}`;
  ui.cost.dataset.exact = totals.cost_usd;
}

// ---- session lifecycle ----
async function openMicrophone() {
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  } catch (err) {
    if (err.name === 'NotAllowedError' || err.name === 'SecurityError') {
      throw new CallError('mic_denied', 'Microphone access was denied. Allow the microphone for this site, then press Start again.');
    }
    if (err.name === 'NotFoundError') throw new CallError('mic_missing', 'No microphone was found. Connect one and press Start again.');
    throw new CallError('mic_error', `The microphone could not be opened (${err.name}).`);
  }
}

async function start() {
  clearError();
  ui.start.disabled = true;
  setControls(true);
  const pushToTalk = ui.turn.value === 'push_to_talk';
  let stream = null;
  try {
    setStatus('Opening the microphone…');
    stream = await openMicrophone();
    setStatus('Starting the session…');
    const body = { model: ui.model.value, voice: ui.voice.value, turn_detection: ui.turn.value, document_ids: picker.ids };
    const text = ui.docText.value.trim();
    if (text) body.document_text = text;
    const session = await api('/api/sessions/', body);
    const socket = new UsageSocket(session.usage_ws, {
      onAck,
      onBudgetExceeded: () => stop('The spending limit was reached, so the session was ended.'),
      onServerError: (msg) => setStatus(`The server could not record usage: ${msg.message}`),
    });
    const micTrack = stream.getAudioTracks()[0];
    const call = new RealtimeCall({
      micTrack,
      audioElement: ui.audio,
      onEvent: onRealtimeEvent,
      onConnectionLost: () => stop('The network connection to the realtime service was lost. Press Start to begin a new session.'),
      onAutoplayBlocked: () => {
        ui.playAudio.hidden = false;
        showError('The browser blocked the assistant\'s audio. Press "Play the assistant\'s audio" to hear it.');
      },
    });
    state = { session, stream, call, socket, pushToTalk, talking: false };
    window.voiceSession = state;
    socket.start();
    setStatus('Connecting the call…');
    const callId = await call.connect(session.calls_url, session.client_secret);
    if (callId) await api(`/api/sessions/${session.id}/call`, { call_id: callId });
    await call.opened;
    // The server built these items: each document, labelled with its title and id.
    for (const item of session.context_items) call.send(item);
    if (pushToTalk) micTrack.enabled = false;
  } catch (err) {
    const message = err instanceof CallError ? err.message : `Something went wrong: ${err.message}`;
    await stop(message);
  }
}

function setControls(running) {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.mute.disabled = !running;
  ui.talk.hidden = !(running && ui.turn.value === 'push_to_talk');
  ui.talk.disabled = !running;
  for (const el of [ui.model, ui.voice, ui.turn, ui.docText]) el.disabled = running;
  picker.setDisabled(running);
}

async function stop(errorMessage) {
  const current = state;
  state = null;
  if (errorMessage) showError(errorMessage);
  setControls(false);
  ui.mute.setAttribute('aria-pressed', 'false');
  ui.mute.textContent = 'Mute';
  setActivity('idle', 'Not connected');
  if (!current) { setStatus(errorMessage ? 'Stopped.' : 'Ready.'); return; }
  current.call?.close();
  current.stream?.getTracks().forEach((t) => t.stop());
  setStatus('Ending the session…');
  try {
    const ended = await api(`/api/sessions/${current.session.id}/end`);
    // The server may have ended it first: say why, not just that the call dropped.
    if (ended.end_reason === 'budget') showError('The spending limit was reached, so the session was ended.');
    await current.socket.stop();
    setStatus(`Session ended. ${ended.totals.responses} answers, $${Number(ended.totals.cost_usd).toFixed(4)}.`);
  } catch (err) {
    await current.socket.stop(500);
    setStatus('The session stopped, but the server could not be told. It will end it on its own.');
  }
}

function toggleMute() {
  if (!state) return;
  const muted = ui.mute.getAttribute('aria-pressed') !== 'true';
  ui.mute.setAttribute('aria-pressed', String(muted));
  ui.mute.textContent = muted ? 'Unmute' : 'Mute';
  if (!state.pushToTalk || state.talking) state.stream.getAudioTracks().forEach((t) => { t.enabled = !muted; });
}

// Push to talk: clear the buffer on press, commit and ask for an answer on release.
function talkDown() {
  if (!state || !state.pushToTalk || state.talking) return;
  state.talking = true;
  ui.talk.setAttribute('aria-pressed', 'true');
  if (state.responding) {
    // Interrupt the answer being spoken: cancel, then drop the queued audio.
    state.call.send({ type: 'response.cancel' });
    state.call.send({ type: 'output_audio_buffer.clear' });
  }
  state.call.send({ type: 'input_audio_buffer.clear' });
  if (ui.mute.getAttribute('aria-pressed') !== 'true') state.stream.getAudioTracks().forEach((t) => { t.enabled = true; });
  setActivity('user', 'You are speaking');
}

function talkUp() {
  if (!state || !state.talking) return;
  state.talking = false;
  ui.talk.setAttribute('aria-pressed', 'false');
  state.stream.getAudioTracks().forEach((t) => { t.enabled = false; });
  state.call.send({ type: 'input_audio_buffer.commit' });
  state.call.send({ type: 'response.create' });
  setActivity('listening', 'Thinking');
}

ui.start.addEventListener('click', start);
ui.stop.addEventListener('click', () => stop());
ui.mute.addEventListener('click', toggleMute);
ui.talk.addEventListener('pointerdown', talkDown);
ui.talk.addEventListener('pointerup', talkUp);
ui.talk.addEventListener('pointerleave', talkUp);
ui.talk.addEventListener('keydown', (e) => { if ((e.key === ' ' || e.key === 'Enter') && !e.repeat) { e.preventDefault(); talkDown(); } });
ui.talk.addEventListener('keyup', (e) => { if (e.key === ' ' || e.key === 'Enter') { e.preventDefault(); talkUp(); } });
ui.turn.addEventListener('change', () => { ui.talk.hidden = true; });
ui.playAudio.addEventListener('click', () => {
  ui.audio.play().then(() => { ui.playAudio.hidden = true; clearError(); }).catch(() => {});
});
// A closing tab still ends the call and tells the server.
window.addEventListener('pagehide', () => {
  if (!state) return;
  state.call?.close();
  fetch(`/api/sessions/${state.session.id}/end`, {
    method: 'POST', keepalive: true, headers: { 'X-CSRFToken': csrfToken, 'Content-Type': 'application/json' }, body: '{}',
  });
});
