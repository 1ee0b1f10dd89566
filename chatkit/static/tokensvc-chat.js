/*
 * tokensvc chat client: plain JavaScript, no build step.
 *
 * The page never sees the upstream API key: it holds a short-lived session token handed
 * over by the extension host (getSession), refreshes it ahead of expiry (one refresh at a
 * time), and reads thread events through a native EventSource authenticated by a
 * single-use stream ticket in the URL. When a stream ends (ticket used, token expiring,
 * network) it fetches a fresh ticket and resumes after the last event id it saw. It stops
 * for good on "revoked".
 */
(function (global) {
  "use strict";

  var REFRESH_AHEAD_S = 60;

  function TokensvcChat(options) {
    this.baseUrl = (options.baseUrl || "").replace(/\/$/, "");
    this.getSession = options.getSession; // async () => {access_token, expires_at}
    this.onEvent = options.onEvent || function () {};
    this.onStatus = options.onStatus || function () {};
    this.session = null;
    this._refreshing = null;
    this._source = null;
    this._threadId = null;
    this._lastEventId = null;
    this._stopped = false;
    this._retryDelay = 500;
  }

  TokensvcChat.prototype._now = function () {
    return Date.now() / 1000;
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
      self.refresh().catch(function () {});
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
          throw new Error("refresh failed: " + response.status);
        }
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
    if (!response.ok) throw new Error(method + " " + path + ": " + response.status);
    return response.status === 204 ? null : response.json();
  };

  TokensvcChat.prototype.createThread = function () {
    return this._api("POST", "/chatkit/threads");
  };

  TokensvcChat.prototype.getThread = function (threadId) {
    return this._api("GET", "/chatkit/threads/" + encodeURIComponent(threadId));
  };

  TokensvcChat.prototype.send = function (threadId, text) {
    return this._api("POST", "/chatkit/threads/" + encodeURIComponent(threadId) + "/messages", {
      text: text,
    });
  };

  TokensvcChat.prototype.follow = async function (threadId) {
    this._threadId = threadId;
    this._stopped = false;
    await this._connect();
  };

  TokensvcChat.prototype.stop = function () {
    this._stopped = true;
    clearTimeout(this._refreshTimer);
    clearTimeout(this._reconnectTimer);
    if (this._source) this._source.close();
    this._source = null;
  };

  TokensvcChat.prototype._connect = async function () {
    var self = this;
    if (this._stopped) return;
    var ticket = await this._api("POST", "/sessions/ticket");
    var url =
      this.baseUrl + "/chatkit/threads/" + encodeURIComponent(this._threadId) + "/events" +
      "?access_token=" + encodeURIComponent(ticket.ticket);
    if (this._lastEventId !== null) {
      url += "&last_event_id=" + encodeURIComponent(this._lastEventId);
    }
    var source = new EventSource(url);
    this._source = source;
    var kinds = ["message", "delta", "done", "error", "token_expiring"];
    kinds.forEach(function (kind) {
      source.addEventListener(kind, function (event) {
        if (event.lastEventId) self._lastEventId = event.lastEventId;
        self._retryDelay = 500;
        if (kind === "token_expiring") self.refresh().catch(function () {});
        self.onEvent(kind, JSON.parse(event.data));
      });
    });
    source.addEventListener("open", function () {
      self.onStatus("connected");
    });
    source.addEventListener("revoked", function () {
      self.onStatus("revoked");
      self.onEvent("revoked", {});
      self.stop();
    });
    source.addEventListener("session_expired", function () {
      // The stream's token ran out: refresh, then resume with a new ticket.
      source.close();
      self.onStatus("reconnecting");
      self.refresh().then(function () { self._connect(); }, function () {});
    });
    source.onerror = function () {
      // A ticket is single use, so the browser's own retry would be refused: close and
      // reconnect with a fresh ticket after a growing delay.
      source.close();
      if (self._stopped || self._source !== source) return;
      self.onStatus("reconnecting");
      self._reconnectTimer = setTimeout(function () {
        self._connect().catch(function () { self.onStatus("offline"); });
      }, self._retryDelay);
      self._retryDelay = Math.min(self._retryDelay * 2, 10000);
    };
  };

  global.TokensvcChat = TokensvcChat;
})(window);
