//! The deployment files cannot drift from the CLI: every `sessionview` command line and
//! `SESSIONVIEW_*` variable in `docker-compose.yml`, the Dockerfile, the README and
//! `docs/operations.md` is one the binary accepts, and the configuration reference in
//! `docs/operations.md` is exactly what the binary generates. (No Docker engine is needed: the
//! binary under test parses what the files would run, with `--check-args`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_sessionview");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs the binary with only `env` as SESSIONVIEW_* environment.
fn run(args: &[String], env: &BTreeMap<String, String>) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SESSIONVIEW_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env);
    cmd.output().unwrap()
}

fn reference() -> String {
    let out = run(&["reference".into()], &BTreeMap::new());
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Every environment variable the binary reads (from the generated reference).
fn known_variables() -> BTreeSet<String> {
    let mut vars = words(&reference(), "SESSIONVIEW_");
    // Read directly, not through a flag: the log filter.
    vars.insert("SESSIONVIEW_LOG".into());
    vars
}

/// Every `--flag` the binary accepts (from the generated reference).
fn known_flags() -> BTreeSet<String> {
    words(&reference(), "--")
}

/// Tokens starting with `prefix` (then letters, digits, `_` or `-`).
fn words(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        let tail = &rest[i + prefix.len()..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(tail.len());
        let word = &tail[..len];
        let glued = before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !word.is_empty()
            && !glued
            && word.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        {
            found.insert(format!("{prefix}{}", word.trim_end_matches(['-', '_'])));
        }
        rest = &tail[len..];
    }
    found
}

fn scalar(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

struct Service {
    name: String,
    command: Vec<String>,
    env: BTreeMap<String, String>,
}

/// The services that run the sessionview image.
fn sessionview_services() -> Vec<Service> {
    let docs = YamlLoader::load_from_str(&read("docker-compose.yml")).unwrap();
    let services = docs[0]["services"].as_hash().expect("services");
    let mut out = Vec::new();
    for (name, svc) in services {
        let image = svc["image"].as_str().unwrap_or_default();
        if !image.starts_with("sessionview") {
            continue;
        }
        let command = svc["command"]
            .as_vec()
            .unwrap_or_else(|| panic!("{name:?}: command must be a list"))
            .iter()
            .map(scalar)
            .collect();
        let env = svc["environment"]
            .as_hash()
            .map(|h| h.iter().map(|(k, v)| (scalar(k), scalar(v))).collect())
            .unwrap_or_default();
        out.push(Service {
            name: scalar(name),
            command,
            env,
        });
    }
    out
}

#[test]
fn every_compose_command_and_variable_is_accepted_by_the_binary() {
    let services = sessionview_services();
    let names: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for expected in ["migrate", "project", "serve", "simulate"] {
        assert!(
            names.contains(expected),
            "compose service {expected} missing"
        );
    }
    let known = known_variables();
    for svc in &services {
        // The service's command with its environment: parsed and validated, nothing run.
        let mut args = vec!["--check-args".to_owned()];
        args.extend(svc.command.iter().cloned());
        let out = run(&args, &svc.env);
        assert!(
            out.status.success(),
            "compose service {}: `sessionview {}` with {:?} is rejected:\n{}",
            svc.name,
            svc.command.join(" "),
            svc.env,
            String::from_utf8_lossy(&out.stderr)
        );
        // clap ignores variables it does not know: each must be one this command (or the image's
        // health check) reads.
        let mut help_args: Vec<String> = svc
            .command
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .cloned()
            .collect();
        help_args.push("--help".into());
        let help = String::from_utf8(run(&help_args, &BTreeMap::new()).stdout).unwrap();
        let health = String::from_utf8(
            run(&["healthcheck".into(), "--help".into()], &BTreeMap::new()).stdout,
        )
        .unwrap();
        for var in svc.env.keys() {
            assert!(
                known.contains(var),
                "compose service {}: {var} is read by no command",
                svc.name
            );
            let tag = format!("[env: {var}=");
            assert!(
                help.contains(&tag) || health.contains(&tag) || var == "SESSIONVIEW_LOG",
                "compose service {}: `sessionview {}` does not read {var}",
                svc.name,
                help_args.join(" ")
            );
        }
    }
}

/// The `docker compose run --rm SERVICE ARGS...` examples in the compose file's header run
/// `sessionview ARGS...`.
#[test]
fn compose_examples_are_accepted_by_the_binary() {
    let mut checked = 0;
    for line in read("docker-compose.yml").lines() {
        let Some(rest) = line
            .trim_start_matches(['#', ' '])
            .strip_prefix("docker compose run --rm ")
        else {
            continue;
        };
        let mut words = rest.split_whitespace().map(str::to_owned);
        let _service = words.next();
        let mut args = vec!["--check-args".to_owned()];
        args.extend(words);
        let out = run(&args, &BTreeMap::new());
        assert!(
            out.status.success(),
            "{line}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(
        checked > 0,
        "the compose file shows how to create a keypair"
    );
}

/// Everything the binary reads appears in the docs and deployment files only under its real name.
#[test]
fn documented_flags_and_variables_exist() {
    let vars = known_variables();
    let flags = known_flags();
    for file in [
        "docker-compose.yml",
        "Dockerfile",
        "README.md",
        "docs/operations.md",
    ] {
        let text = read(file);
        for var in words(&text, "SESSIONVIEW_") {
            // The test harness's own settings are documented for developers; the librdkafka
            // settings are a family (SESSIONVIEW_KAFKA_<KEY>), read by prefix; the build reads
            // SESSIONVIEW_WEB_ASSETS (crates/sessionview-query/build.rs).
            if var.starts_with("SESSIONVIEW_TEST")
                || var.starts_with("SESSIONVIEW_KAFKA_")
                || var == "SESSIONVIEW_UPDATE_DOCS"
                || var == "SESSIONVIEW_WEB_ASSETS"
            {
                continue;
            }
            assert!(
                vars.contains(&var),
                "{file} mentions {var}, which the binary does not read"
            );
        }
        if file == "docs/operations.md" {
            for flag in words(&text, "--") {
                assert!(
                    flags.contains(&flag)
                        || ["--help", "--check-args", "--scale", "--profile", "--rm"]
                            .contains(&flag.as_str()),
                    "{file} mentions {flag}, which no sessionview command accepts"
                );
            }
        }
    }
}

const BEGIN: &str = "<!-- BEGIN generated: sessionview reference -->";
const END: &str = "<!-- END generated: sessionview reference -->";

/// docs/operations.md embeds the reference the binary generates, byte for byte. To update it:
/// `SESSIONVIEW_UPDATE_DOCS=1 cargo test -p sessionview --test e2e deployment::`.
#[test]
fn the_configuration_reference_is_current() {
    let path = repo().join("docs/operations.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/operations.md lacks the {BEGIN} ... {END} markers");
    };
    let current = &doc[b + BEGIN.len()..e];
    let generated = format!("\n\n{}", reference());
    if current != generated {
        if std::env::var_os("SESSIONVIEW_UPDATE_DOCS").is_some() {
            let updated = format!("{}{BEGIN}{generated}{}", &doc[..b], &doc[e..]);
            std::fs::write(&path, updated).unwrap();
        } else {
            panic!(
                "docs/operations.md's configuration reference is out of date; run \
                 SESSIONVIEW_UPDATE_DOCS=1 cargo test -p sessionview --test e2e deployment::"
            );
        }
    }
}
