// The page's line to this server during a conversation. It reports each
// answer's and each transcription's usage (the fallback: the server's own
// sideband figures are the bill) and keeps every report until the server
// acknowledges it; after a reconnect the unacknowledged ones are resent. The
// server stores each id once, so a resend never counts twice. It also says
// when the page closed a call whose connection was lost. The server
// sends back its verified totals, when a call's context is ready, when a
// call ended, and when the budget ran out.

const NOOP = () => {};
const RESEND_MS = 2000;

export class UsageSocket {
  // `callNumber`: the call this page holds, said on each (re)connect, so that a tab still holding an
  // earlier call (the conversation went on in another) does not pass for the conversation's page.
  constructor(path, handlers, callNumber) {
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    this.url = `${scheme}://${window.location.host}${path}`;
    this.callNumber = callNumber;
    this.onAck = handlers.onAck || NOOP;
    this.onTotals = handlers.onTotals || NOOP;
    this.onCallReady = handlers.onCallReady || NOOP;
    this.onCallEnded = handlers.onCallEnded || NOOP;
    this.onSources = handlers.onSources || NOOP;
    this.onBudgetExceeded = handlers.onBudgetExceeded || NOOP;
    this.onServerError = handlers.onServerError || NOOP;
    this.onStateChange = handlers.onStateChange || NOOP;
    this.pending = new Map();  // key -> frame, in insertion order
    this.ws = null;
    this.stopped = false;
    this.retryMs = 250;
    this.drainWaiters = [];
  }

  start() {
    this.stopped = false;
    this._open();
  }

  _open() {
    const ws = new WebSocket(`${this.url}?call=${this.callNumber()}`);
    this.ws = ws;
    ws.onopen = () => {
      this.retryMs = 250;
      this.onStateChange('open');
      for (const frame of this.pending.values()) ws.send(JSON.stringify(frame));
    };
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = () => {
      this.onStateChange('closed');
      if (this.stopped) return;
      setTimeout(() => { if (!this.stopped) this._open(); }, this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 5000);
    };
  }

  _receive(raw) {
    let msg;
    try { msg = JSON.parse(raw); } catch { return; }
    if (msg.type === 'usage.ack') {
      this.pending.delete(msg.item_id ? `transcription:${msg.item_id}` : `usage:${msg.response_id}`);
      this.onAck(msg);
    } else if (msg.type === 'transcript.ack') {
      this.pending.delete(`transcript:${msg.item_id}`);
    } else if (msg.type === 'usage.verified' || msg.type === 'session.totals') {
      this.onTotals(msg);
    } else if (msg.type === 'call.ready') {
      this.onCallReady(msg);
    } else if (msg.type === 'call.ended') {
      this.pending.delete(`call:${msg.call}`);
      this.onCallEnded(msg);
    } else if (msg.type === 'answer.sources') {
      this.onSources(msg);
    } else if (msg.type === 'budget.exceeded') {
      this.onBudgetExceeded(msg);
    } else if (msg.type === 'error') {
      const keys = [];
      if (msg.response_id) keys.push(`usage:${msg.response_id}`, `transcription:${msg.response_id}`);
      if (msg.item_id) keys.push(`transcript:${msg.item_id}`);
      if (msg.call !== undefined) keys.push(`call:${msg.call}`);
      for (const key of keys) {
        if (msg.code === 'unavailable') {
          // Not stored for now (the server's database is away): sent again shortly, and on a reconnect.
          if (this.pending.has(key)) setTimeout(() => this._resend(key), RESEND_MS);
        } else {
          // What the server refused will be refused again: drop it, say so.
          this.pending.delete(key);
        }
      }
      this.onServerError(msg);
    }
    this._checkDrained();
  }

  _resend(key) {
    const frame = this.pending.get(key);
    if (frame && this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  _queue(key, frame) {
    this.pending.set(key, frame);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  reportUsage(responseId, usage) {
    this._queue(`usage:${responseId}`, { type: 'usage.report', response_id: responseId, usage });
  }

  reportTranscription(itemId, usage) {
    this._queue(`transcription:${itemId}`, { type: 'usage.report', item_id: itemId, usage });
  }

  reportTranscript(itemId, role, text) {
    this._queue(`transcript:${itemId}`, { type: 'transcript.report', item_id: itemId, role, text });
  }

  // This page closed the call (its connection was lost): the server ends it on the record and hangs
  // it up. Kept until the server answers, like a report.
  callClosed(number) {
    this._queue(`call:${number}`, { type: 'call.closed', call: number });
  }

  get unacknowledged() {
    return this.pending.size;
  }

  _checkDrained() {
    if (this.pending.size === 0) {
      this.drainWaiters.forEach((resolve) => resolve());
      this.drainWaiters = [];
    }
  }

  // Wait (bounded) for the last reports to be acknowledged, then close.
  async stop(timeoutMs = 3000) {
    if (this.pending.size > 0) {
      await Promise.race([
        new Promise((resolve) => this.drainWaiters.push(resolve)),
        new Promise((resolve) => setTimeout(resolve, timeoutMs)),
      ]);
    }
    this.stopped = true;
    if (this.ws) this.ws.close();
  }
}
