/*
 * tokensvc chat client: plain JavaScript, no build step.
 *
 * The page never sees the upstream API key: it holds a short-lived session token handed
 * over by the extension host (getSession), refreshes it ahead of expiry (one refresh at a
 * time), and reads thread events through a native EventSource authenticated by a
 * single-use stream ticket in the URL.
 *
 * Reconnecting: a ticket is single use, so the browser's own EventSource retry would be
 * refused. When a stream drops (network, server restart, token expiring) the client closes
 * it and tries again after a capped, jittered exponential backoff, for as long as it takes:
 * each attempt checks that the thread still exists, fetches a fresh ticket and resumes
 * after the last event id it saw. A thread the server no longer has (404, e.g. an
 * in-memory store after a restart) is replaced by a new thread, reported as a
 * "thread_lost" event. It stops for good on "revoked".
 *
 * The server's "error" event (a failed reply; the stream stays open) shares its name with
 * EventSource's own connection error event: the first carries data, the second none.
 */
(function (global) {
  "use strict";

  var REFRESH_AHEAD_S = 60;
  var RECONNECT_DEFAULTS = { initialDelayMs: 500, maxDelayMs: 30000 };
  var MIN_DELAY_MS = 10;
  var STREAM_EVENTS = ["message", "delta", "done", "token_expiring"];

  /** A non-2xx answer: ``status`` and the JSON body's ``error`` code, when there is one. */
  class ApiError extends Error {
    constructor(method, path, status, code) {
      super(method + " " + path + ": " + status + (code ? " " + code : ""));
      this.name = "ApiError";
      this.status = status;
      this.code = code || null;
    }
  }

  function hasStatus(err, status) {
    return err instanceof ApiError && err.status === status;
  }

  function positive(value, fallback) {
    var number = Number(value);
    return isFinite(number) && number > 0 ? Math.max(MIN_DELAY_MS, number) : fallback;
  }

  function TokensvcChat(options) {
    var reconnect = options.reconnect || {};
    this.baseUrl = (options.baseUrl || "").replace(/\/$/, "");
    this.getSession = options.getSession; // async () => {access_token, expires_at}
    this.onEvent = options.onEvent || function () {};
    this.onStatus = options.onStatus || function () {};
    this.initialDelayMs = positive(reconnect.initialDelayMs, RECONNECT_DEFAULTS.initialDelayMs);
    this.maxDelayMs = Math.max(
      this.initialDelayMs, positive(reconnect.maxDelayMs, RECONNECT_DEFAULTS.maxDelayMs));
    this.random = options.random || Math.random;
    this.session = null;
    this._refreshing = null;
    this._refreshFailures = 0;
    this._replacing = null;
    this._source = null;
    this._threadId = null;
    this._lastEventId = null;
    this._stopped = false;
    this._failures = 0; // consecutive failed connection attempts
    this._generation = 0; // bumped by every connection attempt; older ones give up
    this._resuming = false; // whether the next attempt is a reconnect (check the thread)
    this._onOnline = this._reconnectNow.bind(this);
  }

  TokensvcChat.ApiError = ApiError;

  Object.defineProperty(TokensvcChat.prototype, "threadId", {
    get: function () { return this._threadId; },
  });

  TokensvcChat.prototype._now = function () {
    return Date.now() / 1000;
  };

  /**
   * The wait before reconnect attempt number ``failures`` (0 for the first): exponential,
   * capped at maxDelayMs, with "equal jitter" (between half and all of it) so that many
   * pages cut off by one restart do not all come back in the same instant.
   */
  TokensvcChat.prototype.backoffDelay = function (failures) {
    var ceiling = Math.min(this.maxDelayMs, this.initialDelayMs * Math.pow(2, failures));
    return Math.round(ceiling / 2 + this.random() * (ceiling / 2));
  };

  TokensvcChat.prototype.start = async function () {
    this.session = await this.getSession();
    this._scheduleRefresh();
  };

  // How long before expiry to refresh: a minute, or a third of a short token's lifetime.
  TokensvcChat.prototype._refreshLead = function () {
    var lifetime = this.session.expires_in || REFRESH_AHEAD_S * 3;
    return Math.min(REFRESH_AHEAD_S, lifetime / 3);
  };

  TokensvcChat.prototype._scheduleRefresh = function () {
    var self = this;
    clearTimeout(this._refreshTimer);
    var wait = Math.max(1, this.session.expires_at - this._now() - this._refreshLead());
    this._refreshTimer = setTimeout(function () {
      self.refresh().catch(function () {
        // Server unreachable, say: try again with backoff (any request refreshes too).
        if (self._stopped) return;
        self._refreshTimer = setTimeout(function () {
          self._scheduleRefresh();
        }, self.backoffDelay(self._refreshFailures++));
      });
    }, wait * 1000);
  };

  // Single flight: concurrent callers share one refresh request.
  TokensvcChat.prototype.refresh = function () {
    var self = this;
    if (this._refreshing) return this._refreshing;
    this._refreshing = (async function () {
      try {
        var response = await fetch(self.baseUrl + "/sessions/refresh", {
          method: "POST",
          headers: { Authorization: "Bearer " + self.session.access_token },
        });
        if (response.ok) {
          self.session = await response.json();
        } else if (response.status === 401 && !self._stopped) {
          // Past the session's end (or revoked): ask the host for a new session.
          self.session = await self.getSession();
        } else {
          throw new ApiError("POST", "/sessions/refresh", response.status);
        }
        self._refreshFailures = 0;
        self._scheduleRefresh();
        return self.session;
      } finally {
        self._refreshing = null;
      }
    })();
    return this._refreshing;
  };

  TokensvcChat.prototype._api = async function (method, path, body) {
    if (this.session.expires_at - this._now() < this._refreshLead()) await this.refresh();
    var init = {
      method: method,
      headers: { Authorization: "Bearer " + this.session.access_token },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    var response = await fetch(this.baseUrl + path, init);
    if (!response.ok) {
      var code = null;
      try {
        code = (await response.json()).error || null;
      } catch (ignored) {
        // not a JSON error body
      }
      throw new ApiError(method, path, response.status, code);
    }
    return response.status === 204 ? null : response.json();
  };

  TokensvcChat.prototype.createThread = function () {
    return this._api("POST", "/chatkit/threads");
  };

  TokensvcChat.prototype.getThread = function (threadId) {
    return this._api("GET", "/chatkit/threads/" + encodeURIComponent(threadId));
  };

  /**
   * Post a user message. If ``threadId`` is the followed thread and the server no longer
   * has it, the followed thread is replaced (see "thread_lost") and the message goes there.
   * Resolves to {message_id, response_id, thread_id}.
   */
  TokensvcChat.prototype.send = async function (threadId, text) {
    var answer;
    try {
      answer = await this._postMessage(threadId, text);
    } catch (err) {
      if (!hasStatus(err, 404) || threadId !== this._threadId) throw err;
      threadId = await this._replaceThread(threadId);
      answer = await this._postMessage(threadId, text);
    }
    answer.thread_id = threadId;
    return answer;
  };

  TokensvcChat.prototype._postMessage = function (threadId, text) {
    return this._api("POST", "/chatkit/threads/" + encodeURIComponent(threadId) + "/messages", {
      text: text,
    });
  };

  /** Create a thread and follow it from its first event: the thread's id. */
  TokensvcChat.prototype.open = async function () {
    var thread = await this.createThread();
    this.follow(thread.id, { fromStart: true });
    return thread.id;
  };

  /**
   * Follow a thread's events: from the live tail, or with {fromStart: true} from its first
   * event. Resolves once the first connection attempt is under way; failures are retried.
   */
  TokensvcChat.prototype.follow = function (threadId, options) {
    this._threadId = threadId;
    this._lastEventId = options && options.fromStart ? "0" : null;
    this._stopped = false;
    this._resuming = false;
    this._failures = 0;
    global.addEventListener("online", this._onOnline);
    this._connect();
    return Promise.resolve();
  };

  TokensvcChat.prototype.stop = function () {
    this._stopped = true;
    this._generation += 1;
    global.removeEventListener("online", this._onOnline);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._reconnectTimer);
    this._closeSource();
  };

  TokensvcChat.prototype._closeSource = function () {
    if (this._source) this._source.close();
    this._source = null;
  };

  // The network is back (the browser says so): do not wait out the backoff.
  TokensvcChat.prototype._reconnectNow = function () {
    if (this._stopped || this._source) return;
    this._connect();
  };

  TokensvcChat.prototype._retryLater = function (offline) {
    var self = this;
    var delay = this.backoffDelay(this._failures++);
    this.onStatus(offline ? "offline" : "reconnecting", { retryInMs: delay });
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(function () { self._connect(); }, delay);
  };

  /**
   * The followed thread is gone from the server: create a new one and follow it from its
   * start. One replacement at a time; a caller with a stale id gets the current thread.
   */
  TokensvcChat.prototype._replaceThread = function (lostId) {
    var self = this;
    if (this._threadId !== lostId) return Promise.resolve(this._threadId);
    if (this._replacing) return this._replacing;
    this._replacing = (async function () {
      try {
        var thread = await self.createThread();
        var streaming = self._source !== null;
        self._threadId = thread.id;
        self._lastEventId = "0";
        self.onEvent("thread_lost", { thread_id: lostId, new_thread_id: thread.id });
        if (streaming) self._connect(); // the open stream was for the lost thread
        return thread.id;
      } finally {
        self._replacing = null;
      }
    })();
    return this._replacing;
  };

  // One connection attempt; a newer attempt (or stop) makes this one give up at its next
  // step, so there is never more than one EventSource.
  TokensvcChat.prototype._connect = async function () {
    var self = this;
    var generation = ++this._generation;
    var current = function () { return generation === self._generation && !self._stopped; };
    clearTimeout(this._reconnectTimer);
    this._closeSource();
    if (this._stopped) return;
    var ticket;
    try {
      if (this._resuming) {
        // A reconnect: the server may have lost the thread (restarted with a memory store).
        // Asking once here costs less than an EventSource, which cannot tell a 404 apart.
        try {
          await this.getThread(this._threadId);
        } catch (err) {
          if (!hasStatus(err, 404)) throw err;
          await this._replaceThread(this._threadId);
        }
        if (!current()) return;
      }
      ticket = await this._api("POST", "/sessions/ticket");
    } catch (err) {
      if (!current()) return;
      if (hasStatus(err, 401)) {
        // Revoked, expired or signed by a retired key: a new token first (the host decides).
        try { await this.refresh(); } catch (ignored) { /* retried below */ }
        if (!current()) return;
      }
      this._resuming = true;
      this._retryLater(!(err instanceof ApiError));
      return;
    }
    if (!current()) return;
    this._open(ticket.ticket);
  };

  TokensvcChat.prototype._open = function (ticket) {
    var self = this;
    var url =
      this.baseUrl + "/chatkit/threads/" + encodeURIComponent(this._threadId) + "/events" +
      "?access_token=" + encodeURIComponent(ticket);
    if (this._lastEventId !== null) {
      url += "&last_event_id=" + encodeURIComponent(this._lastEventId);
    }
    var source = new EventSource(url);
    this._source = source;
    this._resuming = true;
    var live = function () { return self._source === source && !self._stopped; };
    var deliver = function (kind, event) {
      var data;
      try {
        data = JSON.parse(event.data);
      } catch (ignored) {
        return; // not an event of this protocol
      }
      if (event.lastEventId) self._lastEventId = event.lastEventId;
      if (kind === "token_expiring") self.refresh().catch(function () {});
      self.onEvent(kind, data);
    };
    STREAM_EVENTS.forEach(function (kind) {
      source.addEventListener(kind, function (event) {
        if (live()) deliver(kind, event);
      });
    });
    source.addEventListener("open", function () {
      if (!live()) return;
      self._failures = 0;
      self.onStatus("connected");
    });
    source.addEventListener("revoked", function () {
      if (!live()) return;
      self.onStatus("revoked");
      self.onEvent("revoked", {});
      self.stop();
    });
    source.addEventListener("session_expired", function () {
      // The stream's token ran out: resume at once with a fresh ticket (and token).
      if (!live()) return;
      self.onStatus("reconnecting");
      self._connect();
    });
    source.addEventListener("error", function (event) {
      if (!live()) return;
      if (typeof event.data === "string") {
        // The server's "error" event: a reply failed; the stream goes on. (Errors that
        // end the stream are followed by its close, handled below.)
        deliver("error", event);
        return;
      }
      // EventSource's own error: the connection dropped or was refused.
      self._closeSource();
      self._retryLater(false);
    });
  };

  global.TokensvcChat = TokensvcChat;
})(window);
