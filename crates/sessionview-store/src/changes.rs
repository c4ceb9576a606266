//! What each commit changed (`session_changes`), for the query services' response caches: the
//! ids of the sessions a commit changed (a kernel's change is its session's) and their owners,
//! numbered in commit order and written by that commit, so that every replica learns of a change
//! exactly when it is committed. A replay's swap or reset notes that everything changed. The
//! shapes and the statements both backends share live here; each backend writes a commit's note
//! in its `commit` module (with the session event log's head, whose row lock orders commits).

use std::collections::BTreeSet;

use sessionview_projection::Changes;
use sqlx::QueryBuilder;
use uuid::Uuid;

use crate::StoreError;
use crate::columns::{Cells, Value};
use crate::sql::Dialect;

/// How many of the newest notes the log keeps: a cache further behind than this many commits
/// forgets everything it holds (it cannot know what it missed).
pub const CHANGES_WINDOW: i64 = 10_000;

pub(crate) const CHANGES_TABLE: &str = "session_changes";

/// Whose a session is: what a list's filter and the caller's scope compare.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub access_key: String,
    pub domain_name: String,
    pub group_id: Uuid,
}

/// One commit's note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its place in commit order (dense).
    pub seq: i64,
    /// The whole read model may have changed (a replay swapped or reset it): `sessions` and
    /// `owners` are empty.
    pub everything: bool,
    /// The changed sessions, ascending.
    pub sessions: Vec<Uuid>,
    /// Their distinct owners, ascending.
    pub owners: Vec<Owner>,
}

/// The notes after a point, and the newest number handed out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangesAfter {
    /// The newest note committed (0 when none ever was).
    pub head: i64,
    /// Notes after the point asked for, oldest first: from the one right after it unless the log
    /// no longer holds that one (then the first is later: the reader missed some).
    pub changes: Vec<Change>,
}

/// A commit's note as it is stored: the session ids, 16 bytes each, and the owners as JSON;
/// or that everything may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Note {
    pub everything: bool,
    pub sessions: Vec<u8>,
    pub owners: String,
}

/// The note of a commit that writes `changes`; `None` when it changes no session.
pub(crate) fn note(changes: &Changes) -> Result<Option<Note>, StoreError> {
    if changes.sessions.is_empty() {
        return Ok(None);
    }
    let ids: BTreeSet<Uuid> = changes.sessions.iter().map(|s| s.session.id).collect();
    let owners: BTreeSet<(&str, &str, Uuid)> = changes
        .sessions
        .iter()
        .map(|s| {
            let s = &s.session;
            (s.access_key.as_str(), s.domain_name.as_str(), s.group_id)
        })
        .collect();
    let owners = serde_json::to_string(&owners).map_err(|e| StoreError::Corrupt {
        table: CHANGES_TABLE,
        detail: format!("an owner could not be written as JSON: {e}"),
    })?;
    Ok(Some(Note {
        everything: false,
        sessions: ids.iter().flat_map(|id| *id.as_bytes()).collect(),
        owners,
    }))
}

/// The note that says everything may have changed.
pub(crate) fn everything() -> Note {
    Note {
        everything: true,
        sessions: Vec::new(),
        owners: "[]".to_owned(),
    }
}

/// The `seq` up to which a commit that just noted `seq` deletes notes, when it is time to (once
/// per 256 notes, not every commit).
pub(crate) fn prune_through(seq: i64) -> Option<i64> {
    (seq % 256 == 0 && seq > CHANGES_WINDOW).then(|| seq - CHANGES_WINDOW)
}

/// The head and up to `limit` notes after `after` as (`head`, `seq`, `everything`, `sessions`,
/// `owners`) cells, one row with empty note cells when there are none.
pub(crate) fn changes_query<'a, D: Dialect>(after: i64, limit: i64) -> QueryBuilder<'a, D> {
    let mut qb = QueryBuilder::new(format!(
        "SELECT h.changes, c.seq, c.everything, c.sessions, c.owners \
         FROM session_events_head h LEFT JOIN (SELECT seq, everything, sessions, owners \
         FROM {CHANGES_TABLE} WHERE seq > "
    ));
    D::push_value(&mut qb, Value::Int8(Some(after)));
    qb.push(" ORDER BY seq LIMIT ");
    D::push_value(&mut qb, Value::Int8(Some(limit)));
    qb.push(") c ON 1 = 1 WHERE h.id = 1 ORDER BY c.seq");
    qb
}

/// One row of [`changes_query`]: the head, and a note if the row has one.
pub(crate) fn change_from(c: &mut impl Cells) -> Result<(i64, Option<Change>), StoreError> {
    let head = c.int8()?;
    let Some(seq) = c.opt_int8()? else {
        return Ok((head, None));
    };
    let everything = c.opt_bool()?.unwrap_or(true);
    let bytes = c.opt_bytes()?.unwrap_or_default();
    let text = c.opt_text()?.unwrap_or_default();
    let corrupt = |detail: String| StoreError::Corrupt {
        table: CHANGES_TABLE,
        detail,
    };
    let ids = bytes.chunks_exact(16);
    if !ids.remainder().is_empty() {
        return Err(corrupt(format!(
            "the note {seq} holds {} bytes of session ids, not a multiple of 16",
            bytes.len()
        )));
    }
    let sessions = ids.filter_map(|id| Uuid::from_slice(id).ok()).collect();
    let owners: Vec<(String, String, Uuid)> = serde_json::from_str(&text)
        .map_err(|e| corrupt(format!("the owners of note {seq} are not a list: {e}")))?;
    Ok((
        head,
        Some(Change {
            seq,
            everything,
            sessions,
            owners: owners
                .into_iter()
                .map(|(access_key, domain_name, group_id)| Owner {
                    access_key,
                    domain_name,
                    group_id,
                })
                .collect(),
        }),
    ))
}

/// The rows of [`changes_query`] as what they say.
pub(crate) fn changes_after(
    rows: impl IntoIterator<Item = Result<(i64, Option<Change>), StoreError>>,
) -> Result<ChangesAfter, StoreError> {
    let mut out = ChangesAfter::default();
    for row in rows {
        let (head, change) = row?;
        out.head = head;
        out.changes.extend(change);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns::tests::{Stored, session};
    use sessionview_projection::{SessionRow, SessionState};

    fn state(id: u128, access_key: &str, group: u128) -> SessionState {
        SessionState {
            session: SessionRow {
                id: Uuid::from_u128(id),
                access_key: access_key.to_owned(),
                domain_name: "default".to_owned(),
                group_id: Uuid::from_u128(group),
                ..session()
            },
            kernels: Vec::new(),
        }
    }

    #[test]
    fn a_note_holds_each_session_and_owner_once_in_order() {
        let changes = Changes {
            sessions: vec![state(3, "B", 1), state(1, "A", 1), state(2, "A", 1)],
            ..Changes::default()
        };
        let noted = note(&changes).unwrap().unwrap();
        let (head, change) = change_from(&mut Stored::of(&[
            Value::Int8(Some(9)),
            Value::Int8(Some(7)),
            Value::Bool(Some(false)),
            Value::Bytes(Some(&noted.sessions)),
            Value::Text(Some(&noted.owners)),
        ]))
        .unwrap();
        let change = change.unwrap();
        assert_eq!((head, change.seq, change.everything), (9, 7, false));
        assert_eq!(
            change.sessions,
            vec![Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3)]
        );
        let keys: Vec<&str> = change
            .owners
            .iter()
            .map(|o| o.access_key.as_str())
            .collect();
        assert_eq!(keys, ["A", "B"]);
        assert!(
            note(&Changes::default()).unwrap().is_none(),
            "nothing to note"
        );
    }

    #[test]
    fn a_corrupt_note_is_named() {
        let err = change_from(&mut Stored::of(&[
            Value::Int8(Some(9)),
            Value::Int8(Some(7)),
            Value::Bool(Some(false)),
            Value::Bytes(Some(&[1, 2, 3])),
            Value::Text(Some("[]")),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("the note 7"), "{err}");
    }

    #[test]
    fn notes_are_pruned_once_per_256_beyond_the_window() {
        assert_eq!(prune_through(256), None, "within the window");
        let w = CHANGES_WINDOW;
        assert_eq!(prune_through(10_240), Some(10_240 - w));
        assert_eq!(prune_through(10_241), None);
    }
}
