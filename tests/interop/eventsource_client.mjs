// Follows a thread's event stream with the `eventsource` package, as a browser's native
// EventSource would: the stream ticket in the URL, named events, and a close on `revoked`.
//
// argv[2]: the stream URL (with ?access_token=<ticket>); argv[3]: a deadline in seconds.
// stdout: one JSON line per happening: {"type": "open"}, {"type": <event>, "id", "data"},
// {"type": "connection_error"}; exit 0 after `revoked`, 2 if the stream closes for good
// before it, 3 at the deadline.
import { EventSource } from "eventsource";

const [url, deadlineSeconds = "30"] = process.argv.slice(2);
const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const source = new EventSource(url);
const timer = setTimeout(() => {
  say({ type: "deadline" });
  source.close();
  process.exit(3);
}, Number(deadlineSeconds) * 1000);

source.addEventListener("open", () => say({ type: "open" }));
for (const name of ["message", "delta", "done", "token_expiring", "session_expired"]) {
  source.addEventListener(name, (event) => say({ type: name, id: event.lastEventId, data: event.data }));
}
source.addEventListener("error", (event) => {
  // The server's own `error` event carries data; EventSource's connection errors do not.
  if (event.data !== undefined) {
    say({ type: "error", id: event.lastEventId, data: event.data });
    return;
  }
  say({ type: "connection_error" });
  if (source.readyState === EventSource.CLOSED) {
    clearTimeout(timer);
    process.exit(2);
  }
});
source.addEventListener("revoked", (event) => {
  say({ type: "revoked", id: event.lastEventId, data: event.data });
  source.close();  // the server has closed the stream; no reconnect with a spent ticket
  clearTimeout(timer);
});
