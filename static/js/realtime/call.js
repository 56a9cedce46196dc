// One WebRTC call to the realtime upstream (OpenAI, or the local simulator).
// GA flow: raw SDP offer posted with the ephemeral secret; the call id comes
// back in the Location header of the 201 answer.

export class CallError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export class RealtimeCall {
  constructor({ micTrack, audioElement, onEvent, onConnectionLost, onAutoplayBlocked }) {
    this.micTrack = micTrack;
    this.audioElement = audioElement;
    this.onEvent = onEvent;
    this.onConnectionLost = onConnectionLost;
    this.onAutoplayBlocked = onAutoplayBlocked;
    this.pc = null;
    this.dc = null;
    this.callId = null;
    this.closed = false;
    this.opened = new Promise((resolve) => { this._resolveOpen = resolve; });
  }

  async connect(callsUrl, secret) {
    const pc = new RTCPeerConnection();
    this.pc = pc;
    pc.ontrack = (event) => {
      this.audioElement.srcObject = event.streams[0];
      this.audioElement.play().catch((err) => {
        if (err.name === 'NotAllowedError') this.onAutoplayBlocked();
      });
    };
    pc.onconnectionstatechange = () => {
      if (!this.closed && (pc.connectionState === 'failed' || pc.connectionState === 'disconnected')) {
        this.onConnectionLost(pc.connectionState);
      }
    };
    pc.addTrack(this.micTrack);
    this.dc = pc.createDataChannel('oai-events');
    this.dc.addEventListener('open', () => this._resolveOpen());
    // The upstream hanging up, or the path dying, closes the channel under us.
    this.dc.addEventListener('close', () => {
      if (!this.closed) this.onConnectionLost('closed');
    });
    this.dc.addEventListener('message', (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch { return; }
      if (data && typeof data.type === 'string') this.onEvent(data);
    });

    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    let response;
    try {
      response = await fetch(callsUrl, {
        method: 'POST',
        headers: { Authorization: `Bearer ${secret}`, 'Content-Type': 'application/sdp' },
        body: offer.sdp,
      });
    } catch {
      throw new CallError('network', 'Could not reach the realtime service. Check your connection and press Start again.');
    }
    if (response.status === 401) {
      throw new CallError('token_expired', 'The session token expired before the call connected. Press Start again.');
    }
    if (!response.ok) {
      throw new CallError('upstream_refused', `The realtime service refused the call (HTTP ${response.status}). Try again in a moment.`);
    }
    const location = response.headers.get('Location') || '';
    const last = location.split('?')[0].split('/').pop();
    this.callId = last && last.startsWith('rtc_') ? last : null;
    await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
    return this.callId;
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
    if (this.dc) this.dc.close();
    if (this.pc) this.pc.close();
  }
}
