/* The demo chat panel: what an extension's webview would run. */
(function () {
  "use strict";
  var log = document.getElementById("log");
  var statusEl = document.getElementById("status");
  var form = document.getElementById("composer");
  var input = document.getElementById("text");
  var sendButton = document.getElementById("send");
  var replies = {};
  var SPEAKERS = { user: "You", assistant: "Assistant" };

  function scrollToEnd() {
    log.scrollTop = log.scrollHeight;
  }

  // One message: who speaks, then the text (a separate element, so deltas append to it).
  function addMessage(role) {
    var div = document.createElement("div");
    div.className = "msg " + role;
    var who = document.createElement("div");
    who.className = "who";
    who.textContent = SPEAKERS[role];
    var text = document.createElement("div");
    text.className = "text";
    div.appendChild(who);
    div.appendChild(text);
    log.appendChild(div);
    scrollToEnd();
    return div;
  }

  function textOf(div) {
    return div.querySelector(".text");
  }

  function notice(text, kind) {
    var div = document.createElement("div");
    div.className = "msg notice" + (kind ? " " + kind : "");
    div.textContent = text;
    log.appendChild(div);
    scrollToEnd();
    return div;
  }

  function reply(responseId) {
    return replies[responseId] || (replies[responseId] = addMessage("assistant"));
  }

  var STATUS_TEXT = {
    connected: "connected",
    reconnecting: "reconnecting…",
    offline: "offline",
    revoked: "session ended",
  };

  function showStatus(status, detail) {
    var text = STATUS_TEXT[status] || status;
    if (detail && detail.retryInMs !== undefined) {
      text += ", retrying in " + Math.max(1, Math.round(detail.retryInMs / 1000)) + " s";
    }
    statusEl.textContent = text;
    document.body.dataset.status = status;
  }

  // In an editor, the extension host calls POST /sessions with its client credentials and
  // posts the token to the webview. The demo server plays that part.
  async function getSession() {
    var response = await fetch("/chatkit/demo/session", { method: "POST" });
    if (!response.ok) throw new Error("no session: " + response.status);
    return response.json();
  }

  // ?reconnect_initial_ms=&reconnect_max_ms= shorten the reconnect backoff (tests use it);
  // the client ignores values that are not positive numbers.
  var query = new URLSearchParams(window.location.search);

  var chat = new TokensvcChat({
    baseUrl: "",
    getSession: getSession,
    reconnect: {
      initialDelayMs: query.get("reconnect_initial_ms"),
      maxDelayMs: query.get("reconnect_max_ms"),
    },
    onStatus: showStatus,
    onEvent: function (kind, data) {
      if (kind === "message" && data.role === "user") {
        textOf(addMessage("user")).textContent = data.text;
      } else if (kind === "delta") {
        textOf(reply(data.response_id)).textContent += data.text;
      } else if (kind === "done") {
        var done = reply(data.response_id);
        textOf(done).textContent = data.text;
        done.dataset.done = "true";
      } else if (kind === "error" && data.response_id) {
        // A failed reply: the stream stays open and the next message gets its own reply.
        if (replies[data.response_id]) replies[data.response_id].dataset.failed = "true";
        notice("The assistant's reply failed (" + data.code + "). Send another message to " +
               "try again.", "error");
      } else if (kind === "error") {
        notice("The stream was interrupted (" + data.code + "); reconnecting.", "error");
      } else if (kind === "thread_lost") {
        document.body.dataset.thread = data.new_thread_id;
        notice("The server no longer has this conversation (it may have restarted), so a " +
               "new one has started. The messages above are not part of it.", "thread-lost");
      } else if (kind === "revoked") {
        notice("Session revoked; the stream has ended.");
        sendButton.disabled = true;
        input.disabled = true;
      }
    },
  });

  function sendFailure(err) {
    if (err instanceof TokensvcChat.ApiError) {
      return "Not sent: the server refused it (" + (err.code || err.status) + ").";
    }
    return "Not sent: the server cannot be reached.";
  }

  function fitComposer() {
    input.style.height = "auto";
    input.style.height = input.scrollHeight + "px";
  }

  function submit() {
    var text = input.value.trim();
    if (!text || sendButton.disabled) return;
    input.value = "";
    fitComposer();
    chat.send(chat.threadId, text).catch(function (err) {
      notice(sendFailure(err), "error");
      if (!input.value) {
        input.value = text; // give the text back, to send again
        fitComposer();
      }
    });
  }

  function wireComposer() {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      submit();
    });
    // Enter sends; Shift+Enter (and Enter while an input method is composing) is a new line.
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submit();
      }
    });
    input.addEventListener("input", fitComposer);
  }

  async function main() {
    await chat.start();
    var threadId = await chat.open();
    document.body.dataset.thread = threadId;
    wireComposer();
  }

  main().catch(function (err) {
    showStatus("failed");
    notice(String(err), "error");
  });
})();
