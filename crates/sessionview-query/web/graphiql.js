// The GraphiQL page: GraphiQL (served by sessionview itself) with a fetcher that signs each
// request with the keys typed above it.
"use strict";

function keysOrNull() {
  const accessKey = document.getElementById("ak").value.trim();
  const secretKey = document.getElementById("sk").value;
  return accessKey && secretKey ? { accessKey, secretKey } : null;
}

async function fetcher(params) {
  const keys = keysOrNull();
  if (!keys) {
    return { errors: [{ message: "Enter an access key and a secret key above (sessionview keypair create prints them)." }] };
  }
  const path = "/admin/gql";
  const response = await fetch(path, {
    method: "POST",
    headers: await signedHeaders(keys, "POST", path, "application/json"),
    body: JSON.stringify(params),
  });
  return response.json();
}

function start() {
  document.getElementById("keys").addEventListener("submit", (e) => e.preventDefault());
  const problem = insecureContextProblem();
  if (problem) {
    const banner = document.getElementById("banner");
    banner.textContent = problem;
    banner.hidden = false;
  }
  const root = document.getElementById("graphiql");
  if (typeof ReactDOM === "undefined" || typeof GraphiQL === "undefined") {
    root.className = "missing";
    root.textContent = "This sessionview binary was built without GraphiQL's assets " +
      "(scripts/tools/web-assets fetches them from the npm registry before the build). " +
      "POST signed requests to /admin/gql, or use the live monitor at /monitor.";
    return;
  }
  const example = "query($limit: Int!, $offset: Int!, $status: String) {\n" +
    "  compute_session_list(limit: $limit, offset: $offset, status: $status) {\n" +
    "    total_count\n    items { id name type user_email status status_info status_changed\n" +
    "      containers { id role agent } }\n  }\n}\n";
  ReactDOM.createRoot(root).render(
    React.createElement(GraphiQL, {
      fetcher,
      defaultQuery: example,
      variables: '{"limit": 10, "offset": 0, "status": "RUNNING"}',
    }),
  );
}

start();
