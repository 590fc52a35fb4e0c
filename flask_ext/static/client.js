// dcm-sync's browser client: one dependency-free ES module, served by the Flask extension's
// client_blueprint (for example at /dcm/client.js).
//
//   import { connect } from "/dcm/client.js";
//   const c = connect("/ws", { token });
//   c.on("message", (data) => ...);   // the app's messages, parsed when they are JSON
//   c.on("state", (state, closed) => ...);  // "connecting" | "open" | "reconnecting" | "closed";
//                                    // closed: {code, reason} of the close that caused it
//   c.send({ op: "join", room: "lobby" });  // held while reconnecting
//   c.close();
//
// It reconnects after network loss and after close codes 1001 (going away), 1011, 1012 and
// 1013 (and any other code but the ones below), waiting a random time up to a cap that doubles
// at each failed attempt (exponential backoff with full jitter: a deploy that closes many
// sockets at once does not bring them all back at once). It never retries after 1000 sent by
// close(), 1008 (policy: rate limit, too many connections), 4401 (refused token) or 4403
// (refused origin): those end in state "closed". A refusal before the handshake (the project's
// gevent handler answers a refused token or origin with HTTP 401/403) reaches a browser as a
// failed connection, like a network loss: the client keeps trying, at most every maxDelay.

const NO_RETRY = new Set([1008, 4401, 4403]);

export function connect(url, options = {}) {
  return new Client(url, options);
}

export class Client {
  constructor(url, { token = null, minDelay = 250, maxDelay = 30000 } = {}) {
    this.url = url;
    this.token = token;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.state = null;  // "connecting" once the handlers given right after connect() are on
    this._handlers = {};
    this._queue = [];
    this._attempt = 0;
    this._closed = false;
    this._timer = null;
    this._ws = null;
    queueMicrotask(() => this._open());
  }

  on(event, fn) {
    (this._handlers[event] ||= []).push(fn);
    return this;
  }

  send(data) {
    const text = typeof data === "string" ? data : JSON.stringify(data);
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(text);
    else if (!this._closed) this._queue.push(text);
  }

  close() {
    this._closed = true;
    clearTimeout(this._timer);
    if (this._ws) this._ws.close(1000);
    this._setState("closed", { code: 1000, reason: "" });
  }

  _emit(event, ...args) {
    for (const fn of this._handlers[event] || []) {
      try { fn(...args); } catch (err) { console.error(err); }
    }
  }

  _setState(state, detail) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state, detail);
  }

  _socketUrl() {
    const u = new URL(this.url, location.href);
    if (u.protocol === "http:") u.protocol = "ws:";
    else if (u.protocol === "https:") u.protocol = "wss:";
    if (this.token != null) u.searchParams.set("token", this.token);
    return u.toString();
  }

  _open() {
    if (this._closed) return;
    this._setState(this._attempt ? "reconnecting" : "connecting");
    const ws = new WebSocket(this._socketUrl());
    this._ws = ws;
    ws.onopen = () => {
      this._attempt = 0;
      this._setState("open");
      for (const text of this._queue.splice(0)) ws.send(text);
    };
    ws.onmessage = (ev) => {
      let data = ev.data;
      if (typeof data === "string") {
        try { data = JSON.parse(data); } catch { /* a plain-text message */ }
      }
      this._emit("message", data);
    };
    ws.onclose = (ev) => {
      if (this._ws === ws) this._ws = null;
      if (this._closed) return;
      if (NO_RETRY.has(ev.code)) {
        this._closed = true;
        this._setState("closed", { code: ev.code, reason: ev.reason });
        return;
      }
      this._setState("reconnecting", { code: ev.code, reason: ev.reason });
      const cap = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt);
      this._attempt += 1;
      this._timer = setTimeout(() => this._open(), Math.random() * cap);
    };
  }
}
