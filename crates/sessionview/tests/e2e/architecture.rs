//! The crate-level invariants `docs/ARCHITECTURE.md` states, checked against `cargo metadata`:
//! which crate may depend on which of ours, and on rdkafka, sqlx, anyhow and the async runtime.
//! A new dependency that breaks one fails this test, naming the crate, the dependency and the rule.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Per crate of the workspace: the normal (non-dev) dependencies it must never have. The table in
/// `docs/ARCHITECTURE.md` ("Dependency rules at a glance") says the same in words.
const NEVER: &[(&str, &[&str])] = &[
    (
        "sessionview-events",
        &[
            "tokio",
            "sqlx",
            "rdkafka",
            "reqwest",
            "axum",
            "anyhow",
            "sessionview-projection",
            "sessionview-store",
            "sessionview-projector",
        ],
    ),
    (
        "sessionview-projection",
        &[
            "tokio",
            "sqlx",
            "rdkafka",
            "anyhow",
            "sessionview-store",
            "sessionview-projector",
            "sessionview-query",
        ],
    ),
    (
        "sessionview-simulator",
        &[
            "tokio",
            "sqlx",
            "rdkafka",
            "anyhow",
            "sessionview-store",
            "sessionview-projector",
        ],
    ),
    (
        "sessionview-store",
        &[
            "rdkafka",
            "anyhow",
            "sessionview-projector",
            "sessionview-query",
        ],
    ),
    (
        "sessionview-projector",
        &["sqlx", "anyhow", "axum", "sessionview-query"],
    ),
    (
        "sessionview-query",
        &["sqlx", "rdkafka", "anyhow", "sessionview-projector"],
    ),
];

/// Crates that may link these at all (normal dependencies); every other crate must not.
const ONLY: &[(&str, &[&str])] = &[
    // The projector consumes; the binary produces (`simulate`) and checks the broker at start;
    // the bench publishes its streams.
    (
        "rdkafka",
        &["sessionview-projector", "sessionview", "sessionview-bench"],
    ),
    // All SQL of the read model is the store's; the bench measures PostgreSQL's own ceiling, the
    // test harness creates databases. (The binary links sqlx through the store only.)
    (
        "sqlx",
        &[
            "sessionview-store",
            "sessionview-bench",
            "sessionview-testkit",
        ],
    ),
    // The test harness is a dev-dependency, never a normal one.
    ("sessionview-testkit", &[]),
    // Libraries return typed errors.
    ("anyhow", &["sessionview", "sessionview-bench"]),
];

/// `crate → its normal dependencies` of the workspace's members.
fn workspace_dependencies(metadata: &Value) -> BTreeMap<String, BTreeSet<String>> {
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

/// Every rule `deps` breaks, in words.
fn violations(deps: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (krate, never) in NEVER {
        let Some(has) = deps.get(*krate) else {
            out.push(format!(
                "{krate} is not in the workspace any more: update the rules"
            ));
            continue;
        };
        for d in *never {
            if has.contains(*d) {
                out.push(format!("{krate} depends on {d}, which it must never do"));
            }
        }
    }
    for (dep, allowed) in ONLY {
        for (krate, has) in deps {
            if has.contains(*dep) && !allowed.contains(&krate.as_str()) {
                out.push(format!(
                    "{krate} depends on {dep}; only {} may",
                    allowed.join(", ")
                ));
            }
        }
    }
    out
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_workspace_keeps_its_dependency_rules() {
    let deps = workspace_dependencies(&metadata());
    assert!(deps.len() >= 8, "{deps:?}");
    let broken = violations(&deps);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn a_forbidden_dependency_is_named() {
    let mut deps = workspace_dependencies(&metadata());
    // What adding `sqlx` to the projection crate, and rdkafka to the query crate, would look like.
    deps.get_mut("sessionview-projection")
        .unwrap()
        .insert("sqlx".into());
    deps.get_mut("sessionview-query")
        .unwrap()
        .insert("rdkafka".into());
    let broken = violations(&deps);
    assert!(
        broken.contains(&"sessionview-projection depends on sqlx, which it must never do".into()),
        "{broken:?}"
    );
    assert!(
        broken.contains(
            &"sessionview-query depends on rdkafka; only sessionview-projector, sessionview, sessionview-bench may"
                .into()
        ),
        "{broken:?}"
    );
}
