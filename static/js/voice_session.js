// The voice session page: start a session, talk, see the transcript and cost, stop.
import { CallError, RealtimeCall } from './realtime/call.js';
import { UsageSocket } from './realtime/usage_socket.js';
import { DocumentPicker } from './document_picker.js';
import { fromUnits, toUnits } from './dashboard/figures.js';
import { grouped } from './dashboard/render.js';

const config = JSON.parse(document.getElementById('voice-config').textContent);
const csrfToken = document.querySelector('input[name=csrfmiddlewaretoken]').value;
const $ = (id) => document.getElementById(id);
const ui = {
  model: $('model'), voice: $('voice'), turn: $('turn-detection'), docText: $('document-text'),
  budget: $('context-budget'), start: $('start'), stop: $('stop'), mute: $('mute'),
  talk: $('talk'), playAudio: $('play-audio'), status: $('status'), error: $('error'),
  vad: $('vad-indicator'), vadLabel: $('vad-label'), transcript: $('transcript'), turnAnnouncer: $('turn-announcer'),
  inputTokens: $('input-tokens'), cachedTokens: $('cached-tokens'), outputTokens: $('output-tokens'),
  cost: $('session-cost'), costNote: $('cost-note'), audio: $('remote-audio'), resume: $('resume'),
  searchOnly: $('search-only'), page: $('voice-page'), form: $('session-form'), summary: $('setup-summary'),
  budgetLine: $('budget-remaining'), startReason: $('start-reason'), endedLink: $('ended-link'),
  elsewhere: $('running-elsewhere'), elsewhereText: $('running-elsewhere-text'), endOther: $('end-other'),
  continueOther: $('continue-other'), cancelOther: $('cancel-other'), pttHint: $('ptt-hint'),
  microphone: $('microphone'), level: $('mic-level'), sayForm: $('say-form'), say: $('say'), saySend: $('say-send'),
};

let state = null;  // { session, stream, micTrack, call, callNumber, socket, pushToTalk, talking, playing, ... }

// ---- setup form ----
for (const m of config.models) ui.model.add(new Option(m.id, m.id, false, m.id === config.defaults.model));
for (const v of config.voices) ui.voice.add(new Option(v, v, false, v === config.defaults.voice));
ui.turn.value = config.defaults.turn_detection;
// The script sends the choices as JSON; the form itself is never submitted.
ui.form.addEventListener('submit', (event) => event.preventDefault());

// Money as the server's pages write it: exact decimals rounded half to even on their digits (Decimal's
// rule), never a float's toFixed ($0.00125 was $0.0013 here and $0.0012 on the session's page).
// Amounts are BigInt units of 1e-14 dollars, so that tokens times a price per million stay exact.
const UNIT_PLACES = 14;
const exact = (text) => toUnits(String(text)) * 1000000n;  // a decimal string of the server's (8 places at most)
const costOf = (tokens, perMillion) => toUnits(String(perMillion)) * BigInt(tokens);
const dollars = (units) => grouped(fromUnits(units, 4, UNIT_PLACES));  // "1,234.5678", as the other pages
const SMALLEST = exact('0.0001');
function money(units) {
  return units > 0n && units < SMALLEST ? 'under $0.0001' : `$${dollars(units)}`;
}
// An estimate: "about $0.0012", never "about under $0.0001".
function about(units) {
  return units > 0n && units < SMALLEST ? 'under $0.0001' : `about $${dollars(units)}`;
}

// What the chosen context costs, truthfully: it is billed again with every
// answer, in full on the first and mostly at the cached rate after that.
// Passages one search returns, about: four of a few hundred tokens (sessions_app/tools.py).
const TOKENS_PER_SEARCH = 1200;

// The documents read whole, as the server will place them (pasted text only estimated here).
function inlineTokensChosen(model) {
  const pasted = ui.docText.value.trim();
  const pastedTokens = pasted ? Math.ceil(pasted.length / 4) : 0;  // an estimate; the server counts exactly
  const placed = picker.placement(model.document_budget - pastedTokens, ui.searchOnly.checked);
  return { pastedTokens, placed, inlineTokens: pastedTokens + placed.filter((d) => d.mode === 'inline').reduce((n, d) => n + d.tokens, 0) };
}

function updateEstimate() {
  const model = config.models.find((m) => m.id === ui.model.value);
  const { pastedTokens, placed, inlineTokens } = inlineTokensChosen(model);
  const searched = placed.filter((d) => d.mode === 'search');
  ui.budget.replaceChildren();
  renderBudget();
  if (!inlineTokens && !searched.length) return;
  const perMillion = costOf;
  // Pasted text is only estimated here and always read whole: over the budget it is refused.
  const over = pastedTokens > model.document_budget;
  if (inlineTokens) {
    const total = document.createElement('span');
    total.className = over ? 'over' : '';
    total.textContent = `${pastedTokens ? 'About ' : ''}${grouped(inlineTokens)} tokens read whole; `
      + `${model.id} allows ${grouped(model.document_budget)}${over ? ' — paste less, or upload it to the library' : ''}. `
      + `They are billed again with every answer: ${money(perMillion(inlineTokens, model.text_input_per_million))} `
      + `as new input on the first answer, then ${about(perMillion(inlineTokens, model.text_cached_input_per_million))} `
      + 'per answer while they stay cached. ';
    ui.budget.append(total);
  }
  if (searched.length) {
    const search = document.createElement('span');
    search.className = 'searched';
    search.textContent = `Searched, not read whole: ${searched.map((d) => d.title).join(', ')}. `
      + `Each search adds about ${grouped(TOKENS_PER_SEARCH)} tokens of passages: `
      + `${money(perMillion(TOKENS_PER_SEARCH, model.text_input_per_million))} as new input, `
      + `then ${about(perMillion(TOKENS_PER_SEARCH, model.text_cached_input_per_million))} per later answer.`;
    ui.budget.append(search);
  }
}
// ---- the budget: one statement, from the server's figures ----
let budget = config.budget;

// What this session needs left under the budget to start: the server's reserve plus the
// documents' first read (the same rule as the server's; pasted text is estimated).
function reserveNeeded() {
  const model = config.models.find((m) => m.id === ui.model.value);
  const { inlineTokens } = inlineTokensChosen(model);
  return exact(budget.reserve_usd) + costOf(inlineTokens, model.text_input_per_million);
}

function renderBudget() {
  const needed = reserveNeeded();
  const extra = needed - exact(budget.reserve_usd) > exact('0.00005') ? ` (a reserve of $${budget.reserve_usd} plus the documents' first read)` : '';
  let blocked = '';
  if (!budget.limited) {
    ui.budgetLine.textContent = 'No monthly spending limit applies to you.';
  } else {
    const whose = budget.whose === 'yours' ? 'Your own monthly budget' : `Team ${budget.team}'s monthly budget`;
    ui.budgetLine.textContent = `${whose}: $${grouped(budget.remaining_usd)} left of $${grouped(budget.limit_usd)} this month `
      + `($${grouped(budget.spent_usd)} spent). A session needs $${dollars(needed)} of it to start${extra}.`;
    if (exact(budget.remaining_usd) < needed) {
      blocked = `Start is not available: $${grouped(budget.remaining_usd)} is left, less than the $${dollars(needed)} a session needs. `
        + (extra ? 'Choose fewer documents, or ask' : 'Ask') + ' a team admin to raise the limit; it resets on the first of the month (UTC).';
    }
  }
  ui.budgetLine.dataset.remaining = budget.limited ? budget.remaining_usd : '';
  ui.startReason.textContent = blocked;
  ui.startReason.hidden = !blocked;
  ui.start.disabled = !!state || !!blocked;
}

async function refreshBudget() {
  try {
    const response = await fetch('/api/budget', { credentials: 'same-origin' });
    if (!response.ok) return;
    budget = await response.json();
    renderBudget();
  } catch { /* offline: keep the last statement */ }
}

let budgetTimer = null;
function refreshBudgetSoon() {
  clearTimeout(budgetTimer);
  budgetTimer = setTimeout(refreshBudget, 1000);
}

const picker = new DocumentPicker({
  search: $('doc-search'), results: $('doc-results'), chosen: $('doc-chosen'), onChange: updateEstimate,
  announce: (text) => { $('picker-status').textContent = text; },
});
ui.docText.addEventListener('input', updateEstimate);
ui.searchOnly.addEventListener('change', updateEstimate);
ui.model.addEventListener('change', updateEstimate);

// ---- messages ----
function setStatus(text) { ui.status.textContent = text; }
function showError(text) { ui.error.textContent = text; ui.error.hidden = false; }
function clearError() { ui.error.textContent = ''; ui.error.hidden = true; }
// Errors that say a request of the page's came too late or too soon, with nothing lost: a cancel after the
// answer ended, a response asked for while one runs (the page's own ask is made again when it ends), and a cut (a
// truncate, tagged) past what the upstream had; the person is not told of them.
const HARMLESS_ERRORS = new Set(['response_cancel_not_active', 'conversation_already_has_active_response']);

function setActivity(kind, label) { ui.vad.dataset.state = kind; ui.vadLabel.textContent = label; }

// The server's own message is shown for every other error (a 402 says what is left and why).
const API_MESSAGES = {
  not_authenticated: 'Your sign-in has expired. Reload the page and sign in again.',
  csrf_failed: 'The page is out of date. Reload it and try again.',
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
    const error = new CallError(code, message);
    error.detail = data?.error;
    throw error;
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
    const follow = followingTranscript();
    if (previous) previous.after(li); else ui.transcript.append(li);
    if (follow) scrollTranscript();
  }
  return li.querySelector('.text');
}

// The transcript follows the conversation, unless the person scrolled up to read.
function followingTranscript() {
  const t = ui.transcript;
  return t.scrollHeight - t.scrollTop - t.clientHeight < 48;
}
function scrollTranscript() { ui.transcript.scrollTop = ui.transcript.scrollHeight; }

// Each answer's cost, once the server has priced it (the page's report, then the verified figure).
function showAnswerCost(responseId, cost, verified) {
  if (!state || !responseId) return;
  const known = state.answerCosts.get(responseId);
  if (known?.verified && !verified) return;
  state.answerCosts.set(responseId, { cost, verified });
  for (const itemId of state.answerItems.get(responseId) || []) {
    const li = ui.transcript.querySelector(`li[data-item-id="${CSS.escape(itemId)}"]`);
    if (!li) continue;
    let span = li.querySelector('.answer-cost');
    if (!span) {
      span = document.createElement('span');
      span.className = 'answer-cost';
      li.querySelector('.text').after(span);
    }
    span.textContent = ` $${dollars(exact(cost))}${verified ? '' : ' (not yet verified)'}`;  // as the session's page shows it
    span.dataset.costUsd = cost;
  }
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
  const follow = followingTranscript();
  li.append(box);
  if (follow) scrollTranscript();
}

function appendTranscript(itemId, role, delta) {
  const follow = followingTranscript();
  transcriptEntry(itemId, role).textContent += delta;
  if (follow) scrollTranscript();
}

function finishTranscript(itemId, role, text) {
  const follow = followingTranscript();
  transcriptEntry(itemId, role).textContent = text;
  if (follow) scrollTranscript();
  // A screen reader hears each turn once, whole, not every word as it streams in.
  if (text) ui.turnAnnouncer.textContent = `${role === 'user' ? 'You' : 'Assistant'}: ${text}`;
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
        // A typed message carries its text; a spoken one waits for its transcription.
        const typed = (item.content || []).filter((c) => c?.type === 'input_text' && typeof c.text === 'string');
        if (item.role === 'user' && typed.length) finishTranscript(item.id, 'user', typed.map((c) => c.text).join(' '));
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
      if (event.response?.id) {
        const ids = (event.response.output || []).filter((i) => i.type === 'message' && i.id).map((i) => i.id);
        state.answerItems.set(event.response.id, ids);
        const priced = state.answerCosts.get(event.response.id);
        if (priced) showAnswerCost(event.response.id, priced.cost, priced.verified);
      }
      if (event.response?.id && event.response.usage) state.socket.reportUsage(event.response.id, event.response.usage);
      if (state.askAgain) {
        state.askAgain = false;
        askForAnswer();
      }
      break;
    case 'error':
      if (event.error?.code === 'session_expired') {
        // The 60-minute cap: this call ends now; the conversation goes on in the next one.
        resumeCall('cap');
      } else if (event.error?.code === 'conversation_already_has_active_response'
                 && (event.error?.event_id || '').startsWith('page-ask')) {
        // The person's turn met an answer still running (the server's, to a search): asked when it ends.
        state.askAgain = true;
      } else if (event.error?.code === 'input_audio_buffer_commit_empty') {
        setActivity('idle', 'Too short to hear: hold Talk while you speak');
      } else if (!HARMLESS_ERRORS.has(event.error?.code) && !(event.error?.event_id || '').startsWith('truncate-')) {
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
      state.call.send({ type: 'conversation.item.truncate', event_id: `truncate-${playing.itemId}`.slice(0, 512),
        item_id: playing.itemId, content_index: 0, audio_end_ms: heard });
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
  ui.inputTokens.textContent = grouped(totals.input_tokens);
  ui.cachedTokens.textContent = grouped(totals.cached_tokens);
  ui.outputTokens.textContent = grouped(totals.output_tokens);
  ui.cost.textContent = `$${dollars(exact(totals.cost_usd))}`;
  ui.cost.dataset.exact = totals.cost_usd;
  ui.cost.dataset.verified = totals.verified ? 'true' : 'false';
  const note = totals.unverified
    ? `${totals.unverified} not yet verified by the server`
    : (totals.verified ? 'verified by the server' : '');
  if (state) state.costNote = note;
  ui.costNote.textContent = note;
}

// A new conversation starts from nothing, not from the last one's transcript and figures.
function clearConversation() {
  ui.transcript.replaceChildren();
  for (const figure of [ui.inputTokens, ui.cachedTokens, ui.outputTokens]) figure.textContent = '0';
  ui.cost.textContent = '$0.0000';
  delete ui.cost.dataset.exact;
  delete ui.cost.dataset.verified;
  ui.costNote.textContent = '';
}

// While the socket is down the figures stand still: say so, until it is back.
function showLiveState(current, socketState) {
  if (state !== current) return;
  ui.costNote.textContent = socketState === 'open' ? (current.costNote || '') : 'Live cost paused: reconnecting…';
}

// ---- session lifecycle ----
async function openMicrophone() {
  try {
    const audio = { echoCancellation: true, noiseSuppression: true };
    if (ui.microphone.value) audio.deviceId = { exact: ui.microphone.value };
    return await navigator.mediaDevices.getUserMedia({ audio });
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
  const muted = ui.mute.getAttribute('aria-pressed') === 'true';
  setStatus(muted ? MUTED_STATUS
    : 'Connected. ' + (state.pushToTalk ? 'Hold Talk (or the Space bar) while you speak.' : 'Speak whenever you like.'));
  setActivity('listening', 'Listening');
  // Push to talk: the next thing to do is to hold Talk (unless the person went elsewhere meanwhile).
  if (state.pushToTalk && (document.activeElement === ui.stop || document.activeElement === document.body)) ui.talk.focus();
}
const MUTED_STATUS = 'Muted: the assistant cannot hear you. Press Mute again to talk.';

// Whether the microphone sends sound: not while muted, not before the context
// is in, and in push-to-talk only while Talk is held.
function applyMicrophone() {
  if (!state) return;
  const muted = ui.mute.getAttribute('aria-pressed') === 'true';
  const open = !muted && !state.waitingForContext && (!state.pushToTalk || state.talking);
  state.stream.getAudioTracks().forEach((t) => { t.enabled = open; });
  renderCallControls();
}

// Talk, Mute and typing work only while a call is open: with none (connecting, lost, resuming) a press
// sent nothing yet said "You are speaking", then "Thinking" for ever. Typing waits for the documents too.
function renderCallControls() {
  const open = !!state?.call?.isOpen;
  ui.mute.disabled = !open;
  ui.talk.disabled = !open;
  ui.say.disabled = !open || !!state?.waitingForContext;
  ui.saySend.disabled = ui.say.disabled;
}

// How long a new call's data channel may take to open before the call counts as failed (a page
// waiting on it forever stayed "continuing…", and ignored the cap and later losses meanwhile).
const OPEN_TIMEOUT_MS = 20000;

async function connect(call, post) {
  const sdp = await call.offer();
  const answer = await post(sdp);
  await call.accept(answer.sdp);
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CallError('connection_timeout', 'The call did not connect in time.')),
      OPEN_TIMEOUT_MS);
  });
  try {
    await Promise.race([call.opened, late]);
  } finally {
    clearTimeout(timer);
  }
  return answer;
}

// The page becomes the conversation: setup collapses to a one-line summary.
function setPhase(phase) {
  ui.page.dataset.phase = phase;
  ui.form.hidden = phase === 'call';
  ui.summary.hidden = phase !== 'call';
  if (phase === 'call') {
    const docs = [...picker.chosen.map((d) => d.title), ...(ui.docText.value.trim() ? ['pasted text'] : [])];
    ui.summary.textContent = `${ui.model.value} · voice ${ui.voice.value} · ${ui.turn.selectedOptions[0].text} · `
      + (docs.length ? `documents: ${docs.join(', ')}` : 'no documents');
  }
}

function beginState(stream, pushToTalk) {
  const micTrack = stream.getAudioTracks()[0];
  micTrack.enabled = false;  // opened once the call and its context are ready
  const current = {
    stream, micTrack, pushToTalk, talking: false, call: null, callNumber: 1, waitingForContext: false,
    readyCalls: new Set(), timings: { pressed: performance.now() }, answerItems: new Map(), answerCosts: new Map(),
  };
  state = current;
  window.voiceSession = current;
  startLevelMeter(stream);
  listMicrophones();
  return current;
}

function opened(current) {
  current.callStartedAt = performance.now();
  current.timings.open = current.callStartedAt;  // time to talk: Start pressed to the data channel open
  scheduleRollover();
}

async function start() {
  clearError();
  clearConversation();
  hideElsewhere();
  ui.endedLink.hidden = true;
  ui.start.disabled = true;
  ui.resume.hidden = true;
  setControls(true);
  setPhase('call');
  ui.stop.focus();  // Start is gone: the one thing to do while connecting is to stop
  const pushToTalk = ui.turn.value === 'push_to_talk';
  let current = null;
  try {
    setStatus('Opening the microphone…');
    current = beginState(await openMicrophone(), pushToTalk);
    const call = newCall(current.micTrack);
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
      current.callNumber = started.call;
      current.socket = new UsageSocket(started.usage_ws, socketHandlers(current), () => current.callNumber);
      current.socket.start();
      setStatus('Connecting the call…');
      return started;
    });
    if (state !== current) return;
    opened(current);
    holdMicrophoneForContext(session.documents.length > 0);
    if (current.waitingForContext) setStatus('Connected. Putting your documents into the conversation…');
  } catch (err) {
    // Stopped (and perhaps started again) meanwhile: this start's failure is no longer the page's.
    if (err.code === 'stopped' || (current && state !== current)) return;
    if (err.code === 'session_running') {
      await stop();
      showElsewhere(err);
      return;
    }
    let message = err instanceof CallError ? err.message : `Something went wrong: ${err.message}`;
    if (err.code === 'document_not_found' && Array.isArray(err.detail?.document_ids)) {
      const gone = picker.forget(err.detail.document_ids);
      if (gone.length) {
        const many = gone.length > 1;
        message = `${gone.map((title) => `“${title}”`).join(', ')} ${many ? 'were' : 'was'} deleted or `
          + `${many ? 'are' : 'is'} no longer shared with you, and ${many ? 'were' : 'was'} taken off your list. `
          + `Press Start again to go without ${many ? 'them' : 'it'}.`;
      }
    }
    await stop(message);
    if (err.code === 'budget_exceeded') refreshBudget();
  }
}

// ---- one running conversation per person ----
let elsewhere = null;  // the conversation the server says is already running

function showElsewhere(err, focus = true) {
  elsewhere = err.detail?.session || null;
  ui.elsewhereText.textContent = err.message;
  if (elsewhere?.id) {
    // What it has said and spent so far, on its own page.
    const link = document.createElement('a');
    link.href = elsewhere.url || `/sessions/${elsewhere.id}/`;
    link.textContent = 'See that conversation';
    ui.elsewhereText.append(' ', link, '.');
  }
  ui.elsewhere.hidden = false;
  setStatus('Another conversation of yours is running.');
  if (focus) ui.endOther.focus();
}

function hideElsewhere() {
  ui.elsewhere.hidden = true;
  elsewhere = null;
}

async function endOtherAndStart() {
  if (!elsewhere) return;
  const other = elsewhere;
  hideElsewhere();
  try {
    await api(`/api/sessions/${other.id}/end`);
  } catch (err) {
    showError(err.message);
    return;
  }
  tabs?.postMessage({ type: 'ended', session: other.id });
  await start();
}

// Continue the running conversation in this tab: a new call of the same session, with its
// documents and earlier turns; the other tab lets go of it.
async function continueHere() {
  if (!elsewhere) return;
  const other = elsewhere;
  hideElsewhere();
  clearError();
  ui.endedLink.hidden = true;
  setControls(true);
  ui.stop.focus();
  let current = null;
  try {
    const response = await fetch(`/api/sessions/${other.id}`, { credentials: 'same-origin' });
    if (!response.ok) throw new CallError('gone', 'That conversation could not be read. Reload the page.');
    const detail = await response.json();
    ui.model.value = detail.model;
    ui.voice.value = detail.voice;
    ui.turn.value = detail.turn_detection;
    setControls(true);
    setPhase('call');
    ui.summary.textContent = `${detail.model} · voice ${detail.voice} · ${ui.turn.selectedOptions[0].text} · `
      + (detail.documents.length ? `documents: ${detail.documents.map((d) => d.title).join(', ')}` : 'no documents');
    setStatus('Opening the microphone…');
    current = beginState(await openMicrophone(), detail.turn_detection === 'push_to_talk');
    current.session = { id: detail.id, usage_ws: `/ws/sessions/${detail.id}/`, documents: detail.documents };
    clearConversation();
    for (const entry of detail.transcript) {
      transcriptEntry(entry.item_id, entry.role).textContent = entry.text;
      if (entry.sources?.length) showSources(entry.item_id, entry.sources);
    }
    setStatus('Moving the conversation to this tab…');
    const call = newCall(current.micTrack);
    current.call = call;
    current.resuming = true;
    await connect(call, async (sdp) => {
      const moved = await api(`/api/sessions/${detail.id}/calls`, { sdp });
      // Only now is the conversation this tab's: a move that failed leaves it with the tab that had it,
      // which a socket opened (and closed) here before would have marked as gone.
      current.callNumber = moved.call;
      current.socket = new UsageSocket(current.session.usage_ws, socketHandlers(current), () => current.callNumber);
      current.socket.start();
      tabs?.postMessage({ type: 'continued', session: detail.id });
      return moved;
    });
    current.resuming = false;
    if (state !== current) { call.close(); return; }
    opened(current);
    holdMicrophoneForContext(true);
    if (current.waitingForContext) setStatus('Connected. Bringing the conversation back…');
  } catch (err) {
    if (current && state !== current) return;
    const message = err instanceof CallError ? err.message : `Something went wrong: ${err.message}`;
    await stop(message, { end: false });
  }
}

function socketHandlers(current) {
  return {
    onStateChange: (socketState) => showLiveState(current, socketState),
    onAck: (ack) => {
      showTotals(ack.session);
      if (ack.response_id) showAnswerCost(ack.response_id, ack.cost_usd, false);
      refreshBudgetSoon();
    },
    onTotals: (msg) => {
      showTotals(msg.session);
      if (msg.type === 'usage.verified' && msg.kind === 'response') showAnswerCost(msg.response_id, msg.cost_usd, true);
      refreshBudgetSoon();
    },
    onCallReady,
    onCallEnded: (msg) => {
      if (!state) return;
      if (msg.call === null || msg.call === undefined) {
        // The conversation itself ended elsewhere (Stop in another tab, the server's sweeps, policing).
        const why = {
          user: 'This conversation was ended from another tab or window.',
          tampering: 'This conversation was ended: the page kept changing the settings the server set.',
          no_call: 'This conversation was ended: no call was resumed in time.',
          page_gone: 'This conversation was ended: the server lost touch with this page for too long.',
          running_elsewhere: 'This conversation was ended: another of yours was already running, in another tab or '
            + 'on another device. Start again here to end that one or continue it.',
        };
        stop(why[msg.reason] || 'This conversation was ended by the server.', { end: false, ended: true });
      } else if (msg.reason === 'replaced' && msg.call === state.callNumber && !state.resuming) {
        stop('This conversation went on in another tab or window.', { end: false });
      }
    },
    onSources: (msg) => showSources(msg.item_id, msg.sources),
    onBudgetExceeded: () => { stop('The spending limit was reached, so the session was ended.'); refreshBudget(); },
    onServerError: (msg) => setStatus(`The server could not record usage: ${msg.message}`),
  };
}

// A move to the next call before the cap that failed is tried again this much later.
const ROLLOVER_RETRY_MS = 5000;

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
  renderCallControls();  // a rollover keeps the old call, and its controls, until the new one is up
  const call = newCall(current.micTrack);
  let made = null;  // the server's answer: the call it made (and the one before it, replaced)
  try {
    const answer = await connect(call, async (sdp) => {
      made = await api(`/api/sessions/${current.session.id}/calls`, { sdp });
      return made;
    });
    if (state !== current) { call.close(); return; }
    current.call = call;
    current.callNumber = answer.call;
    current.responding = false;
    current.playing = null;
    old.close();  // a rollover keeps the old call until the new one is up
    current.callStartedAt = performance.now();
    clearError();
    setStatus(why === 'rollover'
      ? 'Moved to a new call, since a call may last at most 60 minutes. Bringing the conversation back…'
      : 'Connected again. Bringing the conversation back…');
    holdMicrophoneForContext(true);
    scheduleRollover();
  } catch (err) {
    call.close();
    if (state !== current) return;
    // A call the server made that never opened is closed: it says so, so the record does not keep it.
    if (made) current.socket?.callClosed(made.call);
    if (err.code === 'session_ended' || err.code === 'budget_exceeded') {
      await stop(err.message);
      return;
    }
    if (why === 'rollover' && !made && !old.lost) {
      // The call in use runs until the cap: the conversation stays in it, and the move is tried again while
      // there is time; after that the cap's own end starts the next call (or offers Resume).
      const left = config.call_max_seconds * 1000 - (performance.now() - current.callStartedAt);
      if (left > 1.5 * ROLLOVER_RETRY_MS) current.rolloverTimer = setTimeout(() => resumeCall('rollover'), ROLLOVER_RETRY_MS);
      return;
    }
    // The call in use was lost while moving (its loss was not reported then): it is closed.
    if (why === 'rollover' && !made) current.socket?.callClosed(current.callNumber);
    old.close();
    renderCallControls();
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
  renderCallControls();
  state.socket?.callClosed(state.callNumber);
  ui.resume.hidden = false;
  ui.resume.focus();
}

function setControls(running) {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.pttHint.hidden = !(running && ui.turn.value === 'push_to_talk');
  ui.talk.hidden = !(running && ui.turn.value === 'push_to_talk');
  renderCallControls();
  for (const el of [ui.model, ui.voice, ui.turn, ui.docText, ui.searchOnly]) el.disabled = running;
  picker.setDisabled(running);
}

// Stop: end the conversation on the server (unless it already ended elsewhere), then say
// what it cost and where to find it.
// `end`: this page ends it; `ended`: it has ended (here or elsewhere), rather than gone on in another tab.
async function stop(errorMessage, { end = true, ended: over = end } = {}) {
  const current = state;
  state = null;
  window.voiceSession = null;
  if (errorMessage) showError(errorMessage);
  setControls(false);
  setPhase('setup');
  stopLevelMeter();
  ui.resume.hidden = true;
  ui.mute.setAttribute('aria-pressed', 'false');
  ui.mute.textContent = 'Mute';
  setActivity('idle', 'Not connected');
  renderBudget();
  const focusNext = () => {
    if (!ui.endedLink.hidden) ui.endedLink.querySelector('a').focus();
    else if (!ui.start.disabled) ui.start.focus();
    else if (!ui.error.hidden) ui.error.focus();
  };
  if (!current) { setStatus(errorMessage ? 'Stopped.' : 'Ready.'); focusNext(); return; }
  clearTimeout(current.rolloverTimer);
  clearTimeout(current.contextTimer);
  current.call?.close();
  current.stream?.getTracks().forEach((t) => t.stop());
  ui.costNote.textContent = current.costNote || '';  // not "paused": these are the conversation's last figures
  if (!current.session) { setStatus('Stopped.'); focusNext(); return; }
  setStatus('Ending the session…');
  try {
    const ended = end ? await api(`/api/sessions/${current.session.id}/end`) : null;
    // The server may have ended it first: say why, not just that the call dropped.
    if (ended?.end_reason === 'budget') showError('The spending limit was reached, so the session was ended.');
    await current.socket?.stop(ended ? 3000 : 500);
    const totals = ended?.totals || (await sessionTotals(current.session.id));
    const answers = totals ? `${totals.responses} ${totals.responses === 1 ? 'answer' : 'answers'}, $${dollars(exact(totals.cost_usd))}` : '';
    setStatus(over ? `Session ended.${answers ? ` ${answers}.` : ''}` : 'This tab is no longer in the conversation.');
    showEndedLink(current.session.id, answers);
  } catch (err) {
    await current.socket?.stop(500);
    setStatus('The session stopped, but the server could not be told. It will end it on its own.');
    showEndedLink(current.session.id, '');
  }
  refreshBudget();
  focusNext();
}

async function sessionTotals(id) {
  try {
    const response = await fetch(`/api/sessions/${id}`, { credentials: 'same-origin' });
    return response.ok ? (await response.json()).totals : null;
  } catch { return null; }
}

function showEndedLink(id, answers) {
  const link = document.createElement('a');
  link.href = `/sessions/${id}/`;
  link.textContent = 'This conversation’s page';
  ui.endedLink.replaceChildren(link, answers ? `: ${answers}, with its transcript, sources and downloads.` : ', with its transcript and cost.');
  ui.endedLink.hidden = false;
}

function toggleMute() {
  if (!state) return;
  const muted = ui.mute.getAttribute('aria-pressed') !== 'true';
  ui.mute.setAttribute('aria-pressed', String(muted));
  applyMicrophone();
  if (muted) setStatus(MUTED_STATUS);
  else if (!state.waitingForContext) setStatus('Microphone on. ' + (state.pushToTalk ? 'Hold Talk (or the Space bar) while you speak.' : 'Speak whenever you like.'));
}

// Push to talk: cut a playing answer and clear the buffer on press; commit and ask for an answer on release.
function talkDown() {
  if (!state || !state.pushToTalk || state.talking || !state.call?.isOpen) return;
  state.talking = true;
  ui.talk.setAttribute('aria-pressed', 'true');
  if (state.responding || state.playing) interrupt();
  state.call.send({ type: 'input_audio_buffer.clear' });
  state.talkStartedAt = performance.now();
  applyMicrophone();
  setActivity('user', 'You are speaking');
}

// The person's turn asks for its answer; tagged, so that a refusal (an answer already running) is known
// as this page's and asked again when that answer ends.
function askForAnswer() {
  state.asks = (state.asks || 0) + 1;
  return state.call.send({ type: 'response.create', event_id: `page-ask-${state.asks}` });
}

// A tap is no turn: the upstream refuses to commit under 100 ms of audio, and a response asked for anyway
// would answer the last turn again.
const MIN_TALK_MS = 250;

function talkUp() {
  if (!state || !state.talking) return;
  state.talking = false;
  ui.talk.setAttribute('aria-pressed', 'false');
  applyMicrophone();
  if (performance.now() - state.talkStartedAt < MIN_TALK_MS) {
    state.call.send({ type: 'input_audio_buffer.clear' });
    setActivity('idle', 'Too short to hear: hold Talk while you speak');
    return;
  }
  // The call may have dropped while Talk was held: then nothing is asked, and nothing is awaited.
  if (state.call.send({ type: 'input_audio_buffer.commit' }) && askForAnswer()) {
    setActivity('listening', 'Thinking');
  } else {
    setActivity('idle', 'Not connected');
  }
}

// ---- push to talk from anywhere: hold Space outside text fields ----
function typingIn(el) {
  if (!el) return false;
  if (el.isContentEditable || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT') return true;
  return el.tagName === 'INPUT' && !['button', 'checkbox', 'radio', 'range', 'submit', 'reset'].includes(el.type);
}

document.addEventListener('keydown', (e) => {
  if (e.key !== ' ' || !state?.pushToTalk || typingIn(e.target) || e.target === ui.talk) return;
  e.preventDefault();  // no scrolling, no pressing whatever button has focus
  if (!e.repeat) talkDown();
});
document.addEventListener('keyup', (e) => {
  if (e.key !== ' ' || typingIn(e.target) || e.target === ui.talk || !state?.talking) return;
  e.preventDefault();
  talkUp();
});

// ---- typing during the call: a user text item, then an answer, over the call's data channel ----
function sendTyped(event) {
  event.preventDefault();
  const text = ui.say.value.trim();
  if (!state?.call || !text) return;
  if (state.responding || state.playing) interrupt();
  const sent = state.call.send({
    type: 'conversation.item.create',
    item: { type: 'message', role: 'user', content: [{ type: 'input_text', text }] },
  });
  if (!sent) { showError('The message could not be sent: the call is not connected.'); return; }
  askForAnswer();
  ui.say.value = '';
  setActivity('listening', 'Thinking');
}

// ---- the microphone: which one, and how loud ----
async function listMicrophones() {
  let devices = [];
  try {
    devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'audioinput');
  } catch { return; }
  const chosen = ui.microphone.value;
  const options = [new Option("The browser's default microphone", '')];
  devices.filter((d) => d.deviceId && d.deviceId !== 'default').forEach((d, i) => {
    options.push(new Option(d.label || `Microphone ${i + 1}`, d.deviceId));
  });
  ui.microphone.replaceChildren(...options);
  ui.microphone.value = options.some((o) => o.value === chosen) ? chosen : '';
}

// A new microphone during a call: the call keeps going, with the new track in place of the old.
async function switchMicrophone() {
  if (!state?.call?.pc) return;
  const current = state;
  let stream;
  try {
    stream = await openMicrophone();
  } catch (err) {
    showError(err.message);
    return;
  }
  if (state !== current) { stream.getTracks().forEach((t) => t.stop()); return; }
  const track = stream.getAudioTracks()[0];
  const sender = current.call.pc.getSenders().find((x) => x.track?.kind === 'audio' || x.track === current.micTrack);
  await sender?.replaceTrack(track);
  current.stream.getTracks().forEach((t) => t.stop());
  current.stream = stream;
  current.micTrack = track;
  current.call.micTrack = track;
  applyMicrophone();
  startLevelMeter(stream);
  setStatus(`Now using ${track.label || 'the chosen microphone'}.`);
}

let meter = null;
function startLevelMeter(stream) {
  stopLevelMeter();
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return;
  const audio = new Context();
  const analyser = audio.createAnalyser();
  analyser.fftSize = 1024;
  audio.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  let peak = 0;
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const v of samples) sum += v * v;
    // A muted or closed microphone sends silence: the meter shows what the assistant hears.
    const level = Math.min(1, Math.sqrt(sum / samples.length) * 3);
    ui.level.value = level;
    peak = Math.max(peak, level);
    ui.level.dataset.peak = peak.toFixed(3);
  }, 100);
  meter = { audio, timer };
}

function stopLevelMeter() {
  if (!meter) return;
  clearInterval(meter.timer);
  meter.audio.close().catch(() => {});
  meter = null;
  ui.level.value = 0;
}

// ---- other tabs of this browser hear when a conversation moves or ends ----
const tabs = 'BroadcastChannel' in window ? new BroadcastChannel('voice-sessions') : null;
tabs?.addEventListener('message', (event) => {
  if (!state?.session || event.data?.session !== state.session.id) return;
  if (event.data.type === 'continued') stop('This conversation went on in another tab.', { end: false });
  if (event.data.type === 'ended') stop('This conversation was ended from another tab.', { end: false });
});

ui.start.addEventListener('click', start);
ui.endOther.addEventListener('click', endOtherAndStart);
ui.continueOther.addEventListener('click', continueHere);
ui.cancelOther.addEventListener('click', () => { hideElsewhere(); setStatus('Ready.'); ui.start.focus(); });
ui.sayForm.addEventListener('submit', sendTyped);
ui.microphone.addEventListener('change', switchMicrophone);
ui.voice.addEventListener('change', renderBudget);
ui.resume.addEventListener('click', () => resumeCall('drop'));
ui.stop.addEventListener('click', () => stop());
ui.mute.addEventListener('click', toggleMute);
ui.talk.addEventListener('pointerdown', talkDown);
ui.talk.addEventListener('pointerup', talkUp);
ui.talk.addEventListener('pointerleave', talkUp);
ui.talk.addEventListener('keydown', (e) => { if ((e.key === ' ' || e.key === 'Enter') && !e.repeat) { e.preventDefault(); talkDown(); } });
ui.talk.addEventListener('keyup', (e) => { if (e.key === ' ' || e.key === 'Enter') { e.preventDefault(); talkUp(); } });
// The options stay short enough for a phone; what each one means is said beside it.
const TURN_HINTS = {
  server_vad: 'Talk any time; speaking over an answer interrupts it.',
  semantic_vad: 'Like voice activity, but waits until you seem to have finished your thought.',
  push_to_talk: 'Hold Talk, or the Space bar, while you speak.',
};
function showTurnHint() { $('turn-hint').textContent = TURN_HINTS[ui.turn.value] || ''; }
ui.turn.addEventListener('change', () => { ui.talk.hidden = true; showTurnHint(); });
showTurnHint();
// Others in the team may have spent meanwhile: the statement is read again when the page comes back.
window.addEventListener('focus', () => { if (!state) refreshBudget(); });
listMicrophones();
renderBudget();
if (config.running_session) {
  // A conversation of this person is running in another tab: say so before Start is pressed.
  showElsewhere({
    message: 'You already have a conversation running, perhaps in another tab. End it to start a new one, or continue it here.',
    detail: { session: { id: config.running_session } },
  }, false);
  // A reload of the tab that held it ends it a moment later (pagehide): check before offering.
  setTimeout(async () => {
    if (elsewhere?.id !== config.running_session) return;
    try {
      const response = await fetch(`/api/sessions/${config.running_session}`, { credentials: 'same-origin' });
      if (response.ok && (await response.json()).status !== 'active' && elsewhere?.id === config.running_session) {
        hideElsewhere();
        setStatus('Ready.');
      }
    } catch { /* keep the offer: Start will ask the server anyway */ }
  }, 1500);
}
// Leaving mid-conversation ends it: the browser asks first.
window.addEventListener('beforeunload', (event) => {
  if (!state?.session) return;
  event.preventDefault();
  event.returnValue = '';
});
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
