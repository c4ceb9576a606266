//! The configuration reference: every command's flags and `SESSIONVIEW_*` variables as Markdown,
//! generated from the CLI definition itself (`docs/operations.md` embeds it; a test keeps the two
//! equal).

use std::fmt::Write as _;

use clap::{Arg, Command};

/// The reference for `root` and all its visible subcommands.
pub(crate) fn markdown(root: &Command) -> String {
    let mut out = String::new();
    let global: Vec<&Arg> = root.get_arguments().filter(|a| visible(a)).collect();
    if !global.is_empty() {
        let _ = writeln!(out, "### Every command\n");
        table(&mut out, &global);
    }
    for sub in root.get_subcommands() {
        command(&mut out, root.get_name(), sub);
    }
    out
}

fn visible(arg: &Arg) -> bool {
    !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version")
}

fn command(out: &mut String, parent: &str, cmd: &Command) {
    if cmd.is_hide_set() || cmd.get_name() == "help" {
        return;
    }
    let path = format!("{parent} {}", cmd.get_name());
    let _ = writeln!(out, "### `{path}`\n");
    if let Some(about) = cmd.get_about() {
        let _ = writeln!(out, "{}\n", one_line(&about.to_string()));
    }
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| visible(a) && !a.is_global_set())
        .collect();
    if args.is_empty() {
        let _ = writeln!(out, "No options.\n");
    } else {
        table(out, &args);
    }
    for sub in cmd.get_subcommands() {
        command(out, &path, sub);
    }
}

/// Flags whose environment is a family of variables rather than one (no `env` on the flag).
const ENV_FAMILIES: &[(&str, &str)] = &[("kafka-option", "SESSIONVIEW_KAFKA_<KEY>")];

/// The variable (or family of variables) a flag reads.
fn env_of(a: &Arg) -> Option<String> {
    a.get_env()
        .map(|e| e.to_string_lossy().into_owned())
        .or_else(|| {
            let long = a.get_long()?;
            ENV_FAMILIES
                .iter()
                .find(|(flag, _)| *flag == long)
                .map(|(_, family)| (*family).to_owned())
        })
}

fn table(out: &mut String, args: &[&Arg]) {
    let _ = writeln!(out, "| flag | environment variable | default | meaning |");
    let _ = writeln!(out, "|---|---|---|---|");
    for a in args {
        let flag = match a.get_long() {
            Some(l) => format!("`--{l}`"),
            None => format!("`<{}>`", a.get_id().as_str().to_uppercase()),
        };
        let env = env_of(a).map(|e| format!("`{e}`")).unwrap_or_default();
        let default: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if default.is_empty() {
            String::new()
        } else {
            format!("`{}`", default.join(","))
        };
        let mut meaning = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        let values: Vec<String> = a
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !values.is_empty() && !matches!(a.get_action(), clap::ArgAction::SetTrue) {
            if !meaning.ends_with('.') {
                meaning.push('.');
            }
            let _ = write!(meaning, " One of {}.", values.join(", "));
        }
        let _ = writeln!(
            out,
            "| {flag} | {env} | {default} | {} |",
            one_line(&meaning).replace('|', "\\|")
        );
    }
    out.push('\n');
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::Cli;

    fn all_commands(cmd: &Command, out: &mut Vec<Command>) {
        out.push(cmd.clone());
        for sub in cmd.get_subcommands() {
            all_commands(sub, out);
        }
    }

    /// The engineering standard: every flag also reads a `SESSIONVIEW_...` variable.
    #[test]
    fn every_flag_has_an_environment_variable() {
        let mut cmds = Vec::new();
        all_commands(&Cli::command(), &mut cmds);
        let mut missing = Vec::new();
        for cmd in &cmds {
            for a in cmd.get_arguments().filter(|a| visible(a)) {
                let Some(long) = a.get_long() else { continue };
                match env_of(a) {
                    Some(e) if e.starts_with("SESSIONVIEW_") => {}
                    _ => missing.push(format!("{} --{long}", cmd.get_name())),
                }
            }
        }
        assert!(
            missing.is_empty(),
            "flags without SESSIONVIEW_ variable: {missing:?}"
        );
    }

    #[test]
    fn the_reference_names_every_command_and_flag() {
        let md = markdown(&Cli::command());
        for needle in [
            "### `sessionview project`",
            "### `sessionview dead-letters retry`",
            "### `sessionview keypair create`",
            "| `--stall-after-secs` | `SESSIONVIEW_STALL_AFTER_SECS` | `60` |",
            "| `--log-format` | `SESSIONVIEW_LOG_FORMAT` | `text` |",
        ] {
            assert!(md.contains(needle), "{needle} missing from:\n{md}");
        }
        assert!(
            !md.contains("### `sessionview reference`"),
            "hidden commands stay hidden"
        );
    }
}
