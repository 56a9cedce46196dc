// One WebRTC call to the realtime upstream (OpenAI, or the local simulator).
// The page builds the peer connection and its offer; this server creates the
// call upstream with it and hands back the answer. The page never holds a
// secret and never talks to the upstream over HTTP.

export class CallError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export class RealtimeCall {
  constructor({ micTrack, audioElement, onEvent, onConnectionLost, onAutoplayBlocked, disconnectGraceMs = 5000 }) {
    this.micTrack = micTrack;
    this.audioElement = audioElement;
    this.onEvent = onEvent;
    this.onConnectionLost = onConnectionLost;
    this.onAutoplayBlocked = onAutoplayBlocked;
    this.disconnectGraceMs = disconnectGraceMs;
    this.pc = null;
    this.dc = null;
    this.closed = false;
    this.lost = false;
    this.graceTimer = null;
    // Settles once: open, or the connection lost before it ever opened.
    this.opened = new Promise((resolve, reject) => { this._resolveOpen = resolve; this._rejectOpen = reject; });
    this.opened.catch(() => {});  // a call given up before anyone waits on it
  }

  // The SDP offer for the server to create the call with.
  async offer() {
    const pc = new RTCPeerConnection();
    this.pc = pc;
    pc.ontrack = (event) => {
      this.audioElement.srcObject = event.streams[0];
      this.audioElement.play().catch((err) => {
        if (err.name === 'NotAllowedError') this.onAutoplayBlocked();
      });
    };
    pc.onconnectionstatechange = () => this._connectionChanged();
    pc.addTrack(this.micTrack);
    this.dc = pc.createDataChannel('oai-events');
    this.dc.addEventListener('open', () => this._resolveOpen());
    // The upstream hanging up, the 60-minute cap or a dead path closes the channel under us.
    this.dc.addEventListener('close', () => this._lose('closed'));
    this.dc.addEventListener('message', (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch { return; }
      if (data && typeof data.type === 'string') this.onEvent(data, this);
    });
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    return offer.sdp;
  }

  async accept(answerSdp) {
    await this.pc.setRemoteDescription({ type: 'answer', sdp: answerSdp });
  }

  // `disconnected` often comes back on its own: only a failure, or a disconnection
  // that lasts past the grace period, counts as a lost connection.
  _connectionChanged() {
    const state = this.pc.connectionState;
    if (state === 'connected') {
      clearTimeout(this.graceTimer);
      this.graceTimer = null;
    } else if (state === 'failed') {
      this._lose(state);
    } else if (state === 'disconnected' && !this.graceTimer) {
      this.graceTimer = setTimeout(() => {
        if (this.pc.connectionState !== 'connected') this._lose('disconnected');
      }, this.disconnectGraceMs);
    }
  }

  _lose(why) {
    if (this.closed || this.lost) return;
    this.lost = true;
    this._rejectOpen(new CallError('connection_failed', 'The call could not connect to the realtime service.'));
    this.onConnectionLost(why, this);
  }

  // Whether events can be sent now: the data channel is open and the call neither closed nor lost.
  get isOpen() {
    return !this.closed && !this.lost && this.dc?.readyState === 'open';
  }

  send(event) {
    if (this.dc && this.dc.readyState === 'open') {
      this.dc.send(JSON.stringify(event));
      return true;
    }
    return false;
  }

  close() {
    this.closed = true;
    // Whoever waits for it to open (a start the person stopped) stops waiting now, not at its timeout.
    this._rejectOpen(new CallError('closed', 'The call was closed.'));
    clearTimeout(this.graceTimer);
    if (this.dc) this.dc.close();
    if (this.pc) this.pc.close();
  }
}
