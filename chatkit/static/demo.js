/* The demo chat panel: what an extension's webview would run. */
(function () {
  "use strict";
  var log = document.getElementById("log");
  var statusEl = document.getElementById("status");
  var replies = {};

  function add(kind, text) {
    var div = document.createElement("div");
    div.className = "msg " + kind;
    div.textContent = text;
    log.appendChild(div);
    log.scrollTop = log.scrollHeight;
    return div;
  }

  // In an editor, the extension host calls POST /sessions with its client credentials and
  // posts the token to the webview. The demo server plays that part.
  async function getSession() {
    var response = await fetch("/chatkit/demo/session", { method: "POST" });
    if (!response.ok) throw new Error("no session: " + response.status);
    return response.json();
  }

  var chat = new TokensvcChat({
    baseUrl: "",
    getSession: getSession,
    onStatus: function (status) {
      statusEl.textContent = status;
      document.body.dataset.status = status;
    },
    onEvent: function (kind, data) {
      if (kind === "message" && data.role === "user") {
        add("user", data.text);
      } else if (kind === "delta") {
        var div = replies[data.response_id] || (replies[data.response_id] = add("assistant", ""));
        div.textContent += data.text;
      } else if (kind === "done") {
        var done = replies[data.response_id] || add("assistant", "");
        done.textContent = data.text;
        done.dataset.done = "true";
      } else if (kind === "error") {
        add("notice", "error: " + data.code);
      } else if (kind === "revoked") {
        add("notice", "session revoked; the stream has ended");
        document.getElementById("send").disabled = true;
      }
    },
  });

  async function main() {
    await chat.start();
    var thread = await chat.createThread();
    document.body.dataset.thread = thread.id;
    await chat.follow(thread.id);
    document.getElementById("composer").addEventListener("submit", function (event) {
      event.preventDefault();
      var input = document.getElementById("text");
      var text = input.value.trim();
      if (!text) return;
      input.value = "";
      chat.send(thread.id, text).catch(function (err) { add("notice", String(err)); });
    });
  }

  main().catch(function (err) {
    statusEl.textContent = "failed";
    add("notice", String(err));
  });
})();
