// A WebSocket that keeps coming back: after any close it reconnects with a
// growing, jittered delay, so a restarted server is not hit by every tab at once.

const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 30000;

export class LiveSocket {
  constructor(path, { onOpen, onMessage, onStateChange }) {
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    this.url = `${scheme}://${window.location.host}${path}`;
    this.onOpen = onOpen;
    this.onMessage = onMessage;
    this.onStateChange = onStateChange || (() => {});
    this.retryMs = FIRST_RETRY_MS;
    this.ws = null;
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this._open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close();
  }

  _open() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.retryMs = FIRST_RETRY_MS;
      this.onStateChange('open');
      this.onOpen();
    };
    ws.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      if (message && typeof message === 'object') this.onMessage(message);
    };
    ws.onclose = () => {
      if (this.stopped) return;
      const delay = this.retryMs / 2 + Math.random() * (this.retryMs / 2);
      this.onStateChange('closed', delay);
      this.timer = setTimeout(() => this._open(), delay);
      this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
    };
  }
}
