// sessionview's browser pages: Backend.AI request signing with Web Crypto (the secret key never
// leaves the page), and the secure-context check Web Crypto needs. Plain script, no modules, so
// Node.js can run it too (the signing test does).
"use strict";

// The page's content-security-policy violations, kept for diagnosis (the browser test reads them).
const cspViolations = [];
if (typeof document !== "undefined") {
  document.addEventListener("securitypolicyviolation",
    (e) => cspViolations.push(e.violatedDirective + " " + e.blockedURI));
}

const API_VERSION = "v5.20191215";
const EMPTY_BODY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

async function hmacSha256(keyBytes, text) {
  const key = await crypto.subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(text)));
}

function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Backend.AI HMAC-SHA256 request signing, as the v5.20191215 clients do it.
async function signRequest(secretKey, method, pathAndQuery, date, host, contentType) {
  const stringToSign = [method, pathAndQuery, date, "host:" + host,
    "content-type:" + contentType.toLowerCase(), "x-backendai-version:" + API_VERSION,
    EMPTY_BODY_SHA256].join("\n");
  const day = date.slice(0, 10).replaceAll("-", "");
  const k1 = await hmacSha256(new TextEncoder().encode(secretKey), day);
  const k2 = await hmacSha256(k1, host);
  return toHex(await hmacSha256(k2, stringToSign));
}

// The headers of a signed request from this page. `contentType` null: none is sent (a GET), and
// the server verifies it as application/octet-stream, as it does for Backend.AI's clients.
async function signedHeaders(keys, method, pathAndQuery, contentType) {
  const date = new Date().toISOString().replace("Z", "+00:00");
  const signature = await signRequest(keys.secretKey, method, pathAndQuery, date, location.host,
    contentType || "application/octet-stream");
  const headers = {
    "X-BackendAI-Date": date,
    "X-BackendAI-Version": API_VERSION,
    "Authorization": "BackendAI signMethod=HMAC-SHA256, credential=" + keys.accessKey + ":" + signature,
  };
  if (contentType) headers["Content-Type"] = contentType;
  return headers;
}

// Why this page cannot sign here, or null: browsers give Web Crypto only to secure contexts
// (HTTPS, or http://localhost).
function insecureContextProblem() {
  if (globalThis.isSecureContext && globalThis.crypto && crypto.subtle) return null;
  return "This page was opened over plain HTTP on " + location.host + ", which is not localhost: " +
    "browsers refuse Web Crypto there, so it cannot sign requests. Open it over HTTPS (serve with " +
    "--tls-cert and --tls-key, or behind a TLS proxy), or through an SSH tunnel to localhost.";
}

// A GraphQL request to /admin/gql signed with `keys`: the standard {data, errors} envelope.
async function graphql(keys, query, variables) {
  const path = "/admin/gql";
  const response = await fetch(path, {
    method: "POST",
    headers: await signedHeaders(keys, "POST", path, "application/json"),
    body: JSON.stringify({ query, variables: variables || {} }),
  });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch (e) {
    throw new Error("HTTP " + response.status + ": " + text.slice(0, 300));
  }
  if (!response.ok) {
    throw new Error(body.msg || body.title || ("HTTP " + response.status));
  }
  return body;
}
