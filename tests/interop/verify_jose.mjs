// Verifies tokens with jose's jwtVerify against the server's remote JWKS, at jose's default
// settings (no clock tolerance): what a Node service that trusts tokensvc would do.
//
// stdin: {"jwks_url": str, "issuer": str, "checks": [{"token": str, "audience": str}, ...]}
// stdout: one JSON line per check: {"ok": true, "header": {...}, "payload": {...}}
//         or {"ok": false, "code": "<jose error code>", "message": "..."}
import { createRemoteJWKSet, jwtVerify } from "jose";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const jwks = createRemoteJWKSet(new URL(request.jwks_url));

let failed = false;
for (const check of request.checks) {
  try {
    const { payload, protectedHeader } = await jwtVerify(check.token, jwks, {
      issuer: request.issuer,
      audience: check.audience,
    });
    console.log(JSON.stringify({ ok: true, header: protectedHeader, payload }));
  } catch (error) {
    failed = true;
    console.log(JSON.stringify({ ok: false, code: error.code ?? error.name, message: error.message }));
  }
}
process.exitCode = failed ? 1 : 0;
