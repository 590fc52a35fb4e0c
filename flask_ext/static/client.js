// dcm-sync's browser client: one dependency-free ES module, served by the Flask extension's
// client_blueprint (for example at /dcm/client.js).
//
//   import { connect } from "/dcm/client.js";
//   const c = connect("/ws", { token });
//   c.on("message", (data) => ...);   // the app's messages, parsed when they are JSON
//   c.on("state", (state, closed) => ...);  // "connecting" | "open" | "reconnecting" | "closed";
//                                    // closed: {code, reason} of the close that caused it
//   c.on("resumed", ({ recovered }) => ...);  // on a recovery route, after a reconnect
//   c.send({ op: "join", room: "lobby" });  // held while reconnecting
//   c.close();
//
// On a route with recovery=True (the server's first frame is a hello: docs/protocol.md) it
// keeps the resume token and what it got of each room and of its direct messages, asks to
// resume when it reconnects (any server will do), and reports "resumed": recovered true when
// it was given everything it missed (it comes before anything new, once), false when a gap
// could not be filled or the resume was refused (then it is a new connection: re-join).
// Messages are delivered to "message" handlers as on any route, with the room as a second
// argument ({ room }) when they came to one.
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
    this.id = null;  // the connection id, on a recovery route
    this._token = null;  // the resume token of the last hello
    this._rooms = {};  // room -> [epoch, offset] of the last message (or join) seen
    this._directs = 0;  // number of the last direct message seen
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
    if (this._token != null) {
      u.searchParams.set("resume", this._token);
      u.searchParams.set("since", JSON.stringify(this._rooms));
      u.searchParams.set("seen", String(this._directs));
    }
    return u.toString();
  }

  // one frame of a recovery route; false if it is not one (the socket speaks plain messages)
  _frame(f, resuming) {
    if (f.t === "hello") {
      this.id = f.id;
      this._token = f.token;
      if (resuming) {
        const recovered = f.recovered === true;
        if (!("recovered" in f)) { this._rooms = {}; this._directs = 0; }  // refused: new
        this._emit("resumed", { recovered });
      }
      return;
    }
    if (f.t === "j") {
      const known = this._rooms[f.r];
      if (!known || known[0] !== f.e) this._rooms[f.r] = [f.e, f.o];
      return;
    }
    if (f.t !== "r" && f.t !== "d") return;  // a kind this client does not know: skipped
    if (f.t === "r" && "o" in f) this._rooms[f.r] = [f.e, f.o];
    if (f.t === "d" && "n" in f) this._directs = f.n;
    let data = f.d;
    try { data = JSON.parse(data); } catch { /* a plain-text message */ }
    this._emit("message", data, f.t === "r" ? { room: f.r } : {});
  }

  _open() {
    if (this._closed) return;
    this._setState(this._attempt ? "reconnecting" : "connecting");
    const resuming = this._token != null;
    const ws = new WebSocket(this._socketUrl());
    this._ws = ws;
    let framed = null;  // whether this socket speaks the recovery protocol (its first frame)
    ws.onopen = () => {
      this._attempt = 0;
      this._setState("open");
      for (const text of this._queue.splice(0)) ws.send(text);
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;  // an old socket the server lets go
      let data = ev.data;
      if (typeof data === "string") {
        try { data = JSON.parse(data); } catch { /* a plain-text message */ }
      }
      if (framed === null) {
        framed = data !== null && typeof data === "object" && data.dcm === 1 && data.t === "hello";
        if (!framed) { this._token = null; this.id = null; }  // a plain route
      }
      if (framed) this._frame(data, resuming);
      else this._emit("message", data);
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
