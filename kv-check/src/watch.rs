//! The watch workload's history and its check. Writers put unique values to a few keys;
//! watchers watch all of them from the first revision and now and then close their watch and
//! open it again from the revision after the last event they got (as an application that
//! restarts does), while members fail under them. The promises:
//!
//! - every acknowledged write is in the store's history at its revision, and every event of
//!   that history is a write some client sent;
//! - each watcher sees every event of the store's history from where it started, once, in
//!   revision order, with the right key and value, across its reopens and the failures of the
//!   members it watched through;
//! - each watcher catches up: once writes stop, it reaches the store's last revision.

use serde::{Deserialize, Serialize};

/// One change of a watched key. `value == None`: the key was deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub revision: i64,
    pub key: String,
    pub value: Option<u64>,
}

/// A writer's put; times in ns since the workload began, `ret == None` when no answer came.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub client: u32,
    pub key: String,
    pub value: u64,
    pub call: i64,
    pub ret: Option<i64>,
    /// The revision it was acknowledged at.
    pub revision: Option<i64>,
}

/// What one watcher saw: the revision it first asked for, every event in the order delivered,
/// and the revisions it reopened its watch from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watcher {
    pub watcher: u32,
    pub from_revision: i64,
    pub events: Vec<Change>,
    pub reopens: Vec<i64>,
    /// An error that ended the watch for good (compaction), if any.
    pub ended: Option<String>,
}

/// Checks writes and watchers against `history`, the store's changes of the watched keys in
/// revision order as read after the members converged. Up to five problems, in words.
pub fn check(writes: &[Write], watchers: &[Watcher], history: &[Change]) -> Vec<String> {
    let mut problems = Vec::new();
    let at: std::collections::HashMap<i64, &Change> = history.iter().map(|c| (c.revision, c)).collect();
    let sent: std::collections::HashMap<u64, &Write> = writes.iter().map(|w| (w.value, w)).collect();
    for w in writes {
        if let Some(rev) = w.revision {
            match at.get(&rev) {
                Some(c) if c.key == w.key && c.value == Some(w.value) => {}
                other => problems.push(format!(
                    "acknowledged write {}={} at revision {rev} is lost: the store's history has {other:?} there",
                    w.key, w.value
                )),
            }
        }
    }
    for c in history {
        if c.value.is_none_or(|v| sent.get(&v).is_none_or(|w| w.key != c.key)) {
            problems.push(format!("revision {} holds {}={:?}, which no client wrote", c.revision, c.key, c.value));
        }
    }
    let last = history.last().map_or(0, |c| c.revision);
    for w in watchers {
        let expected: Vec<&Change> = history.iter().filter(|c| c.revision >= w.from_revision).collect();
        let mismatch = expected.iter().zip(&w.events).position(|(e, got)| *e != got);
        if let Some(i) = mismatch {
            let after = if i == 0 {
                "as its first event".to_string()
            } else {
                format!("after revision {}", w.events[i - 1].revision)
            };
            problems.push(format!(
                "watcher {} {after}: expected {}, got {}",
                w.watcher,
                show(expected[i]),
                show(&w.events[i])
            ));
        } else if w.events.len() > expected.len() {
            problems.push(format!(
                "watcher {} got {} beyond the store's last change",
                w.watcher,
                show(&w.events[expected.len()])
            ));
        } else if w.events.len() < expected.len() {
            let reached = w.events.last().map_or(w.from_revision - 1, |c| c.revision);
            problems.push(format!(
                "watcher {} stopped at revision {reached} (reopened {} times{}); the store's history goes on to {last}",
                w.watcher,
                w.reopens.len(),
                w.ended.as_ref().map_or(String::new(), |e| format!(", ended by: {e}"))
            ));
        }
    }
    problems.truncate(5);
    problems
}

fn show(c: &Change) -> String {
    match c.value {
        Some(v) => format!("revision {} {}={v}", c.revision, c.key),
        None => format!("revision {} delete {}", c.revision, c.key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: i64, key: &str, value: u64) -> Change {
        Change { revision, key: key.into(), value: Some(value) }
    }

    fn write(key: &str, value: u64, revision: Option<i64>) -> Write {
        Write { client: 0, key: key.into(), value, call: 0, ret: revision.map(|_| 1), revision }
    }

    fn watcher(from_revision: i64, events: Vec<Change>) -> Watcher {
        Watcher { watcher: 1, from_revision, events, ..Watcher::default() }
    }

    fn history() -> Vec<Change> {
        vec![change(2, "w/0", 10), change(3, "w/1", 11), change(4, "w/0", 12)]
    }

    fn writes() -> Vec<Write> {
        vec![write("w/0", 10, Some(2)), write("w/1", 11, None), write("w/0", 12, Some(4)), write("w/1", 13, None)]
    }

    #[test]
    fn a_watcher_that_saw_everything_once_in_order_passes() {
        let all = watcher(1, history());
        let late = watcher(3, history()[1..].to_vec());
        assert_eq!(check(&writes(), &[all, late], &history()), Vec::<String>::new());
    }

    #[test]
    fn skipped_repeated_reordered_and_missing_events_are_found() {
        let h = history();
        let skipped = watcher(1, vec![h[0].clone(), h[2].clone()]);
        assert!(check(&writes(), &[skipped], &h)[0].contains("after revision 2: expected revision 3 w/1=11"));
        let repeated = watcher(1, vec![h[0].clone(), h[0].clone(), h[1].clone(), h[2].clone()]);
        assert!(check(&writes(), &[repeated], &h)[0].contains("expected revision 3"));
        let wrong_value = watcher(1, vec![h[0].clone(), change(3, "w/1", 13), h[2].clone()]);
        assert!(check(&writes(), &[wrong_value], &h)[0].contains("got revision 3 w/1=13"));
        let behind = watcher(1, h[..2].to_vec());
        assert!(check(&writes(), &[behind], &h)[0].contains("stopped at revision 3"));
    }

    #[test]
    fn lost_and_invented_writes_are_found() {
        let lost = vec![change(2, "w/0", 10), change(3, "w/1", 11)];
        assert!(check(&writes(), &[], &lost)[0].contains("w/0=12 at revision 4 is lost"));
        let invented = vec![change(2, "w/0", 10), change(3, "w/1", 99), change(4, "w/0", 12)];
        assert!(check(&writes(), &[], &invented)[0].contains("no client wrote"));
    }
}
