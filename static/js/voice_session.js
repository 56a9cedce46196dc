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
  cost: $('session-cost'), costNote: $('cost-note'), audio: $('remote-audio'), resume: $('resume'),
  searchOnly: $('search-only'),
};

let state = null;  // { session, stream, micTrack, call, callNumber, socket, pushToTalk, talking, playing, ... }

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
// Passages one search returns, about: four of a few hundred tokens (sessions_app/tools.py).
const TOKENS_PER_SEARCH = 1200;

function updateEstimate() {
  const model = config.models.find((m) => m.id === ui.model.value);
  const pasted = ui.docText.value.trim();
  const pastedTokens = pasted ? Math.ceil(pasted.length / 4) : 0;  // an estimate; the server counts exactly
  const placed = picker.placement(model.document_budget - pastedTokens, ui.searchOnly.checked);
  const inlineTokens = pastedTokens + placed.filter((d) => d.mode === 'inline').reduce((n, d) => n + d.tokens, 0);
  const searched = placed.filter((d) => d.mode === 'search');
  ui.budget.replaceChildren();
  ui.start.disabled = !!state;
  if (!inlineTokens && !searched.length) return;
  const perMillion = (tokens, rate) => (tokens * Number(rate)) / 1e6;
  // Pasted text is only estimated here and always read whole: over the budget it is refused.
  const over = pastedTokens > model.document_budget;
  if (inlineTokens) {
    const total = document.createElement('span');
    total.className = over ? 'over' : '';
    total.textContent = `${pastedTokens ? 'About ' : ''}${inlineTokens.toLocaleString()} tokens read whole; `
      + `${model.id} allows ${model.document_budget.toLocaleString()}${over ? ' — paste less, or upload it to the library' : ''}. `
      + `They are billed again with every answer: ${money(perMillion(inlineTokens, model.text_input_per_million))} `
      + `as new input on the first answer, then about ${money(perMillion(inlineTokens, model.text_cached_input_per_million))} `
      + 'per answer while they stay cached. ';
    ui.budget.append(total);
  }
  if (searched.length) {
    const search = document.createElement('span');
    search.className = 'searched';
    search.textContent = `Searched, not read whole: ${searched.map((d) => d.title).join(', ')}. `
      + `Each search adds about ${TOKENS_PER_SEARCH.toLocaleString()} tokens of passages: `
      + `${money(perMillion(TOKENS_PER_SEARCH, model.text_input_per_million))} as new input, `
      + `then about ${money(perMillion(TOKENS_PER_SEARCH, model.text_cached_input_per_million))} per later answer.`;
    ui.budget.append(search);
  }
}
const picker = new DocumentPicker({
  search: $('doc-search'), results: $('doc-results'), chosen: $('doc-chosen'), onChange: updateEstimate,
});
ui.docText.addEventListener('input', updateEstimate);
ui.searchOnly.addEventListener('change', updateEstimate);
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

// ---- transcript, in the conversation's order ----
// Our own context items (documents, earlier turns) are not turns of the transcript.
const CONTEXT_PREFIX = 'ctx';

function transcriptEntry(itemId, role, previousItemId) {
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
    // Where the upstream placed the item, not when its text arrived: a late
    // transcription of the user's turn still goes before the answer to it.
    const previous = previousItemId
      && ui.transcript.querySelector(`li[data-item-id="${CSS.escape(previousItemId)}"]`);
    if (previous) previous.after(li); else ui.transcript.append(li);
  }
  return li.querySelector('.text');
}

// Under an answer: the passages the search tool gave for it, each linking to its place in the document.
function showSources(itemId, sources) {
  const li = ui.transcript.querySelector(`li[data-item-id="${CSS.escape(itemId)}"]`);
  if (!li || !sources.length) return;
  li.querySelector('.sources')?.remove();
  const box = document.createElement('div');
  box.className = 'sources';
  const heading = document.createElement('strong');
  heading.textContent = 'Sources';
  const list = document.createElement('ol');
  for (const source of sources) {
    const item = document.createElement('li');
    const where = source.page ? `, page ${source.page}` : (source.section ? `, section “${source.section}”` : '');
    if (source.document_id && source.passage_id) {
      const link = document.createElement('a');
      link.href = `/documents/${source.document_id}/#passage-${source.passage_id}`;
      link.target = '_blank';
      link.textContent = source.title;
      item.append(link, where);
    } else {
      item.append(source.title + where);
    }
    const quote = document.createElement('blockquote');
    quote.textContent = source.text;
    item.append(quote);
    list.append(item);
  }
  box.append(heading, list);
  li.append(box);
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
function onRealtimeEvent(event, call) {
  if (!state || call !== state.call) return;  // a replaced call's last words
  switch (event.type) {
    case 'session.created':
      if (!state.waitingForContext) announceReady();
      break;
    case 'conversation.item.added': {
      const item = event.item || {};
      if (item.type === 'message' && (item.role === 'user' || item.role === 'assistant')
          && typeof item.id === 'string' && !item.id.startsWith(CONTEXT_PREFIX)) {
        transcriptEntry(item.id, item.role, event.previous_item_id);
      }
      break;
    }
    case 'input_audio_buffer.speech_started':
      // Speaking over an answer that is still playing cuts it (voice activity modes).
      if (state.playing || state.responding) interrupt();
      setActivity('user', 'You are speaking');
      break;
    case 'input_audio_buffer.speech_stopped':
      setActivity('listening', 'Thinking');
      break;
    case 'response.output_item.added':
      if (event.item?.type === 'message') state.answerItemId = event.item.id;
      break;
    case 'output_audio_buffer.started':
      state.playing = { responseId: event.response_id, itemId: state.answerItemId, startedAt: performance.now() };
      setActivity('assistant', 'Assistant speaking');
      break;
    case 'output_audio_buffer.stopped':
    case 'output_audio_buffer.cleared':
      state.playing = null;
      setActivity('listening', 'Listening');
      break;
    case 'conversation.item.input_audio_transcription.delta':
      appendTranscript(event.item_id, 'user', event.delta || '');
      break;
    case 'conversation.item.input_audio_transcription.completed':
      finishTranscript(event.item_id, 'user', event.transcript || '');
      if (event.usage) state.socket.reportTranscription(event.item_id, event.usage);
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
      // An answer cut before it said a word leaves no empty line behind.
      for (const item of event.response?.output || []) {
        const li = ui.transcript.querySelector(`li[data-item-id="${CSS.escape(item.id || '')}"]`);
        if (li && !li.querySelector('.text').textContent.trim()) li.remove();
      }
      if (event.response?.id && event.response.usage) state.socket.reportUsage(event.response.id, event.response.usage);
      break;
    case 'error':
      if (event.error?.code === 'session_expired') {
        // The 60-minute cap: this call ends now; the conversation goes on in the next one.
        resumeCall('cap');
      } else if (event.error?.code !== 'response_cancel_not_active') {
        setStatus(`The model reported a problem: ${event.error?.message || 'unknown error'}`);
      }
      break;
    default:
      break;
  }
}

// Cut the answer being spoken: cancel it if it is still generating, drop the
// audio queued for playback, and cut the item where the person stopped hearing
// it, so the transcript says what was heard.
function interrupt() {
  const playing = state.playing;
  if (state.responding) state.call.send({ type: 'response.cancel' });
  if (playing) {
    state.call.send({ type: 'output_audio_buffer.clear' });
    if (playing.itemId) {
      // The browser plays a little behind what it has received.
      const heard = Math.max(0, Math.floor(performance.now() - playing.startedAt) - PLAYOUT_DELAY_MS);
      state.call.send({ type: 'conversation.item.truncate', item_id: playing.itemId, content_index: 0, audio_end_ms: heard });
    }
  }
  state.responding = false;
  state.playing = null;
}
const PLAYOUT_DELAY_MS = 150;

function showTotals(totals) {
  if (state) {
    if (totals.version < (state.totalsVersion ?? -1)) return;  // an older frame overtaken by a newer one
    state.totalsVersion = totals.version;
  }
  ui.inputTokens.textContent = totals.input_tokens.toLocaleString();
  ui.cachedTokens.textContent = totals.cached_tokens.toLocaleString();
  ui.outputTokens.textContent = totals.output_tokens.toLocaleString();
  ui.cost.textContent = `$${Number(totals.cost_usd).toFixed(4)}`;
  ui.cost.dataset.exact = totals.cost_usd;
  ui.cost.dataset.verified = totals.verified ? 'true' : 'false';
  ui.costNote.textContent = totals.unverified
    ? `${totals.unverified} not yet verified by the server`
    : (totals.verified ? 'verified by the server' : '');
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

function newCall(micTrack) {
  return new RealtimeCall({
    micTrack,
    audioElement: ui.audio,
    onEvent: onRealtimeEvent,
    onConnectionLost: onConnectionLost,
    disconnectGraceMs: config.disconnect_grace_seconds * 1000,
    onAutoplayBlocked: () => {
      ui.playAudio.hidden = false;
      showError('The browser blocked the assistant\'s audio. Press "Play the assistant\'s audio" to hear it.');
    },
  });
}

// The microphone stays closed until the server has put the documents (and, in a
// resumed call, the earlier turns) into the call, so no answer is given without them.
function holdMicrophoneForContext(expectsContext) {
  state.waitingForContext = expectsContext && !state.readyCalls.has(state.callNumber);
  clearTimeout(state.contextTimer);
  if (!state.waitingForContext) { applyMicrophone(); announceReady(); return; }
  applyMicrophone();
  state.contextTimer = setTimeout(() => {
    if (!state || !state.waitingForContext) return;
    state.waitingForContext = false;
    applyMicrophone();
    setStatus('Connected, but the server has not confirmed your documents yet: the first answers may not know them.');
  }, config.context_wait_seconds * 1000);
}

function onCallReady(msg) {
  if (!state) return;
  state.readyCalls.add(msg.call);
  if (msg.call !== state.callNumber || !state.waitingForContext) return;
  state.waitingForContext = false;
  clearTimeout(state.contextTimer);
  applyMicrophone();
  announceReady();
}

function announceReady() {
  if (!state || state.waitingForContext) return;
  setStatus('Connected. ' + (state.pushToTalk ? 'Hold Talk while you speak.' : 'Speak whenever you like.'));
  setActivity('listening', 'Listening');
}

// Whether the microphone sends sound: not while muted, not before the context
// is in, and in push-to-talk only while Talk is held.
function applyMicrophone() {
  if (!state) return;
  const muted = ui.mute.getAttribute('aria-pressed') === 'true';
  const open = !muted && !state.waitingForContext && (!state.pushToTalk || state.talking);
  state.stream.getAudioTracks().forEach((t) => { t.enabled = open; });
}

async function connect(call, post) {
  const sdp = await call.offer();
  const answer = await post(sdp);
  await call.accept(answer.sdp);
  await call.opened;
  return answer;
}

async function start() {
  const pressed = performance.now();
  clearError();
  ui.start.disabled = true;
  ui.resume.hidden = true;
  setControls(true);
  const pushToTalk = ui.turn.value === 'push_to_talk';
  let stream = null;
  try {
    setStatus('Opening the microphone…');
    stream = await openMicrophone();
    const micTrack = stream.getAudioTracks()[0];
    micTrack.enabled = false;  // opened once the call and its context are ready
    const current = {
      stream, micTrack, pushToTalk, talking: false, call: null, callNumber: 1, waitingForContext: false,
      readyCalls: new Set(), timings: { pressed },
    };
    state = current;
    window.voiceSession = current;
    const call = newCall(micTrack);
    current.call = call;
    setStatus('Starting the session…');
    const body = {
      model: ui.model.value, voice: ui.voice.value, turn_detection: ui.turn.value, document_ids: picker.ids,
      search_only: ui.searchOnly.checked,
    };
    const text = ui.docText.value.trim();
    if (text) body.document_text = text;
    const session = await connect(call, async (sdp) => {
      const started = await api('/api/sessions/', { ...body, sdp });
      if (state !== current) {
        // Stopped while the server was starting it: end what the server started.
        api(`/api/sessions/${started.id}/end`).catch(() => {});
        throw new CallError('stopped', 'Stopped.');
      }
      current.session = started;
      current.socket = new UsageSocket(started.usage_ws, socketHandlers());
      current.socket.start();
      setStatus('Connecting the call…');
      return started;
    });
    if (state !== current) return;
    current.callStartedAt = performance.now();
    current.timings.open = current.callStartedAt;  // time to talk: Start pressed to the data channel open
    holdMicrophoneForContext(session.documents.length > 0);
    if (current.waitingForContext) setStatus('Connected. Putting your documents into the conversation…');
    scheduleRollover();
  } catch (err) {
    if (err.code === 'stopped') return;
    const message = err instanceof CallError ? err.message : `Something went wrong: ${err.message}`;
    await stop(message);
  }
}

function socketHandlers() {
  return {
    onAck: (ack) => showTotals(ack.session),
    onTotals: (msg) => showTotals(msg.session),
    onCallReady,
    onCallEnded: () => {},
    onSources: (msg) => showSources(msg.item_id, msg.sources),
    onBudgetExceeded: () => stop('The spending limit was reached, so the session was ended.'),
    onServerError: (msg) => setStatus(`The server could not record usage: ${msg.message}`),
  };
}

// Start the next call shortly before the upstream's 60-minute cap ends this one.
function scheduleRollover() {
  clearTimeout(state.rolloverTimer);
  const ms = Math.max(1, config.call_max_seconds - config.rollover_seconds) * 1000;
  state.rolloverTimer = setTimeout(() => resumeCall('rollover'), ms);
}

// The conversation goes on in a new call: after the cap (automatically), or after
// a lost connection (when the person presses Resume). The server re-creates the
// documents and the earlier turns in it, and the cost adds up on the same session.
async function resumeCall(why) {
  if (!state || state.resuming) return;
  const current = state;
  current.resuming = true;
  clearTimeout(current.rolloverTimer);
  ui.resume.hidden = true;
  const old = current.call;
  if (why === 'cap') {
    old.close();
    setStatus('The call reached the 60-minute limit; continuing the conversation in a new call…');
  } else if (why === 'drop') {
    old.close();
    setStatus('Reconnecting the conversation…');
  }
  const call = newCall(current.micTrack);
  try {
    const answer = await connect(call, (sdp) => api(`/api/sessions/${current.session.id}/calls`, { sdp }));
    if (state !== current) { call.close(); return; }
    current.call = call;
    current.callNumber = answer.call;
    current.responding = false;
    current.playing = null;
    old.close();  // a rollover keeps the old call until the new one is up
    current.callStartedAt = performance.now();
    clearError();
    setStatus('Connected again. Bringing the conversation back…');
    holdMicrophoneForContext(true);
    scheduleRollover();
  } catch (err) {
    call.close();
    if (state !== current) return;
    if (err.code === 'session_ended' || err.code === 'budget_exceeded') {
      await stop(err.message);
      return;
    }
    old.close();
    showError(`${err.message} Press Resume to try again.`);
    ui.resume.hidden = false;
  } finally {
    current.resuming = false;
  }
}

function onConnectionLost(why, call) {
  if (!state || call !== state.call || state.resuming) return;
  // The cap's error event starts the next call itself; anything else is a drop.
  showError('The network connection to the realtime service was lost. Press Resume to continue the conversation.');
  setActivity('idle', 'Not connected');
  state.call.close();
  ui.resume.hidden = false;
  ui.resume.focus();
}

function setControls(running) {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.mute.disabled = !running;
  ui.talk.hidden = !(running && ui.turn.value === 'push_to_talk');
  ui.talk.disabled = !running;
  for (const el of [ui.model, ui.voice, ui.turn, ui.docText, ui.searchOnly]) el.disabled = running;
  picker.setDisabled(running);
}

async function stop(errorMessage) {
  const current = state;
  state = null;
  window.voiceSession = null;
  if (errorMessage) showError(errorMessage);
  setControls(false);
  ui.resume.hidden = true;
  ui.mute.setAttribute('aria-pressed', 'false');
  ui.mute.textContent = 'Mute';
  setActivity('idle', 'Not connected');
  if (!current) { setStatus(errorMessage ? 'Stopped.' : 'Ready.'); return; }
  clearTimeout(current.rolloverTimer);
  clearTimeout(current.contextTimer);
  current.call?.close();
  current.stream?.getTracks().forEach((t) => t.stop());
  if (!current.session) { setStatus('Stopped.'); return; }
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
  applyMicrophone();
}

// Push to talk: cut a playing answer and clear the buffer on press; commit and ask for an answer on release.
function talkDown() {
  if (!state || !state.pushToTalk || state.talking) return;
  state.talking = true;
  ui.talk.setAttribute('aria-pressed', 'true');
  if (state.responding || state.playing) interrupt();
  state.call.send({ type: 'input_audio_buffer.clear' });
  applyMicrophone();
  setActivity('user', 'You are speaking');
}

function talkUp() {
  if (!state || !state.talking) return;
  state.talking = false;
  ui.talk.setAttribute('aria-pressed', 'false');
  applyMicrophone();
  state.call.send({ type: 'input_audio_buffer.commit' });
  state.call.send({ type: 'response.create' });
  setActivity('listening', 'Thinking');
}

ui.start.addEventListener('click', start);
ui.resume.addEventListener('click', () => resumeCall('drop'));
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
  if (!state || !state.session) return;
  state.call?.close();
  fetch(`/api/sessions/${state.session.id}/end`, {
    method: 'POST', keepalive: true, headers: { 'X-CSRFToken': csrfToken, 'Content-Type': 'application/json' }, body: '{}',
  });
});
