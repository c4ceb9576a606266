//! `sessionview dead-letters`: list dead-lettered events, and re-apply them after a fix.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use sessionview_events::DEFAULT_MAX_EVENT_BYTES;
use sessionview_projection::{Batch, EventKey, FoldedBatch, Outcome, Position};
use sessionview_store::{
    Advance, Commit, CommitOutcome, DeadLetterFilter, Store, StoredDeadLetter,
};

use crate::{DbArgs, OutputFormat, with_store};

/// `sessionview dead-letters [list flags] | retry ...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct DeadLetterArgs {
    #[command(subcommand)]
    command: Option<DeadLetterCommand>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// List dead letters (the default).
    List(ListArgs),
    /// Re-apply dead letters through the projection rules (after the cause was fixed: a new
    /// version that accepts them, or the state they needed now exists). Those that apply leave the
    /// dead-letter table in the same transaction; those that fail again stay, with the new reason.
    Retry(RetryArgs),
}

/// Which dead letters a command works on.
#[derive(Debug, Args)]
struct Selection {
    #[command(flatten)]
    db: DbArgs,
    /// Only this source (a topic, or file:PATH).
    #[arg(long = "from-source", env = "SESSIONVIEW_DEAD_LETTER_SOURCE")]
    source: Option<String>,
    /// Only this label: malformed, bad_field, unknown_type, unknown_version, invalid,
    /// unknown_kernel, duplicate_enqueue, bad_slots.
    #[arg(long, env = "SESSIONVIEW_LABEL")]
    label: Option<String>,
    /// Only these ids (repeatable; comma-separated in the env var).
    #[arg(
        long = "id",
        env = "SESSIONVIEW_DEAD_LETTER_IDS",
        value_delimiter = ','
    )]
    ids: Vec<i64>,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    selection: Selection,
    /// Most dead letters to list.
    #[arg(long, env = "SESSIONVIEW_LIMIT", default_value_t = 50)]
    limit: i64,
    /// List only dead letters with an id greater than this (paging).
    #[arg(long, env = "SESSIONVIEW_AFTER_ID")]
    after_id: Option<i64>,
    /// Print the raw bytes of each event too.
    #[arg(long, env = "SESSIONVIEW_SHOW_PAYLOAD")]
    show_payload: bool,
    /// Output: a text table or JSON lines.
    #[arg(long, env = "SESSIONVIEW_FORMAT", value_enum, default_value = "text")]
    format: OutputFormat,
}

#[derive(Debug, Args)]
struct RetryArgs {
    #[command(flatten)]
    selection: Selection,
    /// Fold the dead letters and report what would happen, without writing anything.
    #[arg(long, env = "SESSIONVIEW_DRY_RUN")]
    dry_run: bool,
    /// Dead letters re-applied per transaction.
    #[arg(long, env = "SESSIONVIEW_RETRY_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
}

pub(crate) async fn run(args: DeadLetterArgs) -> anyhow::Result<()> {
    match args.command {
        None => list(args.list).await,
        Some(DeadLetterCommand::List(a)) => list(a).await,
        Some(DeadLetterCommand::Retry(a)) => retry(a).await,
    }
}

impl Selection {
    fn filter(&self, after_id: Option<i64>, limit: i64) -> DeadLetterFilter {
        DeadLetterFilter {
            after_id,
            source: self.source.clone(),
            label: self.label.clone(),
            ids: self.ids.clone(),
            limit,
        }
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    if args.limit < 1 {
        bail!("--limit must be at least 1, got {}", args.limit);
    }
    with_store!(args.selection.db, |store| list_with(store, args).await)
}

async fn list_with<S: Store>(store: S, args: ListArgs) -> anyhow::Result<()> {
    let rows = store
        .dead_letters(&args.selection.filter(args.after_id, args.limit))
        .await
        .context("reading dead letters")?;
    for d in &rows {
        match args.format {
            OutputFormat::Json => {
                let mut v = serde_json::json!({
                    "id": d.id,
                    "source": d.source,
                    "partition": d.partition,
                    "offset": d.offset,
                    "event_id": d.event_id,
                    "event_type": d.event_type,
                    "session_id": d.session_id,
                    "label": d.label,
                    "reason": d.reason,
                    "recorded_at": d.recorded_at,
                });
                if args.show_payload {
                    v["payload"] = String::from_utf8_lossy(&d.payload).into();
                }
                println!("{v}");
            }
            OutputFormat::Text => {
                println!("{}", describe(d));
                if args.show_payload {
                    println!("    {}", String::from_utf8_lossy(&d.payload));
                }
            }
        }
    }
    if rows.is_empty() && args.format == OutputFormat::Text {
        println!("no dead letters");
    }
    Ok(())
}

fn describe(d: &StoredDeadLetter) -> String {
    format!(
        "#{id} {source}[{partition}]@{offset} {label}: {reason}",
        id = d.id,
        source = d.source,
        partition = d.partition,
        offset = d.offset,
        label = d.label,
        reason = d.reason
    )
}

async fn retry(args: RetryArgs) -> anyhow::Result<()> {
    with_store!(args.selection.db, |store| retry_with(store, args).await)
}

/// How many times a chunk is re-folded when a live projector moved a position under it.
const CONFLICT_ATTEMPTS: u32 = 10;

async fn retry_with<S: Store>(store: S, args: RetryArgs) -> anyhow::Result<()> {
    // The ids to retry, fixed up front: an event that fails again is stored under a new id, which
    // this run must not pick up again.
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .dead_letters(&args.selection.filter(after, 1000))
            .await
            .context("reading dead letters")?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        ids.extend(page.iter().map(|d| d.id));
    }
    if let Some(missing) = args.selection.ids.iter().find(|id| !ids.contains(id)) {
        bail!("no dead letter with id {missing} matches the selection");
    }
    if ids.is_empty() {
        println!("no dead letters to retry");
        return Ok(());
    }
    let mut total: BTreeMap<Outcome, u64> = BTreeMap::new();
    for chunk in ids.chunks(args.batch_size as usize) {
        let letters = store
            .dead_letters(&DeadLetterFilter {
                ids: chunk.to_vec(),
                limit: chunk.len() as i64,
                ..DeadLetterFilter::default()
            })
            .await
            .context("reading dead letters")?;
        let mut by_source: BTreeMap<&str, Vec<&StoredDeadLetter>> = BTreeMap::new();
        for d in &letters {
            by_source.entry(d.source.as_str()).or_default().push(d);
        }
        for (source, letters) in by_source {
            for (d, outcome, reason) in retry_source(&store, source, &letters, args.dry_run).await?
            {
                *total.entry(outcome).or_default() += 1;
                match reason {
                    Some(r) => println!("{}: still dead: {r}", describe(d)),
                    None => println!("{}: {}", describe(d), outcome.as_str()),
                }
            }
        }
    }
    let summary: Vec<String> = total
        .iter()
        .map(|(o, n)| format!("{}={n}", o.as_str()))
        .collect();
    println!(
        "{} {} dead letters: {}",
        if args.dry_run {
            "would retry"
        } else {
            "retried"
        },
        ids.len(),
        summary.join(" ")
    );
    Ok(())
}

/// Re-folds the dead letters of one source in one transaction; returns each letter's outcome and,
/// for those that failed again, the new reason.
///
/// A live projector may be writing the same sessions: the commit compare-and-sets the positions
/// of the letters' partitions to their current values, so it fails (and is re-folded from fresh
/// state) if the projector committed there in between.
async fn retry_source<'a, S: Store>(
    store: &S,
    source: &str,
    letters: &[&'a StoredDeadLetter],
    dry_run: bool,
) -> anyhow::Result<Vec<(&'a StoredDeadLetter, Outcome, Option<String>)>> {
    let partitions: BTreeSet<i32> = letters.iter().map(|d| d.partition).collect();
    let retire: Vec<i64> = letters.iter().map(|d| d.id).collect();
    let retried: HashSet<EventKey> = letters
        .iter()
        .filter_map(|d| {
            Some(EventKey {
                session_id: d.session_id?,
                event_id: d.event_id?,
            })
        })
        .collect();
    for attempt in 1..=CONFLICT_ATTEMPTS {
        let positions = store.positions(source).await?;
        let guards: Vec<Advance> = partitions
            .iter()
            .filter_map(|p| {
                positions.get(p).map(|&next| Advance {
                    partition: *p,
                    expected: Some(next),
                    next,
                })
            })
            .collect();
        let position = |d: &StoredDeadLetter| Position {
            partition: d.partition,
            offset: d.offset,
        };
        let events = letters
            .iter()
            .map(|d| (position(d), d.payload.as_slice()))
            .collect();
        let planned = Batch::plan(source, events, DEFAULT_MAX_EVENT_BYTES);
        let mut loaded = store.load(planned.request()).await?;
        // A dead-lettered event's id was recorded as seen; this is its second chance.
        for id in &retried {
            loaded.seen.remove(id);
        }
        let FoldedBatch {
            mut changes,
            outcomes,
        } = planned.fold(loaded);
        let outcomes: Vec<_> = letters
            .iter()
            .zip(outcomes)
            .map(|(d, outcome)| {
                let reason = changes
                    .dead_letters
                    .iter()
                    .rev()
                    .find(|n| n.position == position(d))
                    .map(|n| format!("{}: {}", n.label, n.reason));
                (*d, outcome, reason)
            })
            .collect();
        // Their ids are recorded already (a store records each id once).
        for s in &mut changes.seen {
            let session_id = s.session_id;
            s.ids.retain(|&event_id| {
                !retried.contains(&EventKey {
                    session_id,
                    event_id,
                })
            });
        }
        changes.seen.retain(|s| !s.ids.is_empty());
        if dry_run {
            return Ok(outcomes);
        }
        let outcome = store
            .commit(Commit {
                source,
                advances: &guards,
                changes: &changes,
                retire: &retire,
            })
            .await
            .context("committing the retried dead letters")?;
        match outcome {
            CommitOutcome::Committed => return Ok(outcomes),
            CommitOutcome::Conflict { partitions } => {
                tracing::info!(
                    source,
                    ?partitions,
                    attempt,
                    "a projector committed under the retry; folding again from fresh state"
                );
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
        }
    }
    bail!(
        "{source}: a projector kept committing to partitions {partitions:?} during {CONFLICT_ATTEMPTS} attempts; nothing was retried, run the command again"
    )
}
