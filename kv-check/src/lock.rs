//! The lock workload's history and its check. Clients take one lock, each with a lease of its
//! own, write a shared resource guarded by their fencing token while they hold it, and release
//! it; some stop renewing their lease while they wait, as a paused client would. The promises
//! (docs/coordination.md):
//!
//! - mutual exclusion: when a lock is granted, the holder's key exists and is the oldest key of
//!   the lock (at the revision of the grant, no other waiter is ahead of it), so no two grants'
//!   holds overlap in the store's order;
//! - fencing: the guarded writes that succeeded carry tokens that never go back in revision
//!   order; a holder whose lock was lost cannot write.

use serde::{Deserialize, Serialize};

/// One attempt to take the lock; times in ns since the workload began.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub client: u32,
    pub lease: i64,
    /// Whether the client stopped renewing its lease before it asked (a paused client).
    pub stalled: bool,
    pub call: i64,
    /// The grant: when it came, the holder's key and the revision of the answer.
    pub granted: Option<Grant>,
    /// The guarded writes made while holding it.
    pub writes: Vec<FencedWrite>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub at: i64,
    pub key: String,
    pub revision: i64,
    /// The key's create revision as read after the grant (the fencing token), if it was there.
    pub token: Option<i64>,
}

/// A write of the resource guarded by `token`: whether the guard held, and at which revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedWrite {
    pub token: i64,
    pub call: i64,
    pub ret: Option<i64>,
    pub succeeded: Option<bool>,
    pub revision: Option<i64>,
}

/// Checks the attempts. `keys_at_grant[i]`: the lock's keys with their create revisions as the
/// store held them at the revision of attempt `i`'s grant (empty for an attempt not granted).
/// Up to five problems, in words.
pub fn check(attempts: &[LockRecord], keys_at_grant: &[Vec<(String, i64)>]) -> Vec<String> {
    let mut problems = Vec::new();
    for (a, keys) in attempts.iter().zip(keys_at_grant) {
        let Some(g) = &a.granted else { continue };
        let mine = keys.iter().find(|(k, _)| *k == g.key);
        let oldest = keys.iter().min_by_key(|(_, created)| *created);
        match (mine, oldest) {
            (None, _) => problems.push(format!(
                "client {} was granted the lock at revision {} with key {}, which the store did not hold then{}",
                a.client,
                g.revision,
                g.key,
                if a.stalled { " (its lease had stopped being renewed)" } else { "" }
            )),
            (Some((_, created)), Some((other, first))) if first < created => problems.push(format!(
                "client {} was granted the lock at revision {} with key {} (created at {created}), while {other} \
                 (created at {first}) still held it",
                a.client, g.revision, g.key
            )),
            _ => {}
        }
    }
    let mut writes: Vec<(i64, i64, u32)> = attempts
        .iter()
        .flat_map(|a| {
            a.writes
                .iter()
                .filter(|w| w.succeeded == Some(true))
                .filter_map(move |w| Some((w.revision?, w.token, a.client)))
        })
        .collect();
    writes.sort_unstable();
    for pair in writes.windows(2) {
        let ((r1, t1, c1), (r2, t2, c2)) = (pair[0], pair[1]);
        if t2 < t1 {
            problems.push(format!(
                "fencing: client {c2} wrote with token {t2} at revision {r2}, after client {c1} wrote with the newer token \
                 {t1} at revision {r1}"
            ));
        }
    }
    problems.truncate(5);
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(client: u32, key: &str, revision: i64, writes: Vec<(i64, i64)>) -> LockRecord {
        LockRecord {
            client,
            granted: Some(Grant { at: 0, key: key.into(), revision, token: Some(revision) }),
            writes: writes
                .into_iter()
                .map(|(token, rev)| FencedWrite {
                    token,
                    call: 0,
                    ret: Some(1),
                    succeeded: Some(true),
                    revision: Some(rev),
                })
                .collect(),
            ..LockRecord::default()
        }
    }

    #[test]
    fn one_holder_at_a_time_with_growing_tokens_passes() {
        let attempts = vec![granted(1, "l/a", 10, vec![(10, 11)]), granted(2, "l/b", 14, vec![(12, 15)])];
        let keys = vec![vec![("l/a".to_string(), 10)], vec![("l/b".to_string(), 12)]];
        assert_eq!(check(&attempts, &keys), Vec::<String>::new());
    }

    #[test]
    fn a_grant_without_its_key_or_behind_another_is_found() {
        let attempts = vec![granted(1, "l/a", 10, vec![]), granted(2, "l/b", 14, vec![])];
        let keys = vec![vec![], vec![("l/a".to_string(), 9), ("l/b".to_string(), 12)]];
        let found = check(&attempts, &keys);
        assert!(found[0].contains("which the store did not hold then"), "{found:?}");
        assert!(found[1].contains("while l/a (created at 9) still held it"), "{found:?}");
    }

    #[test]
    fn a_token_going_back_is_found() {
        let attempts = vec![granted(1, "l/a", 10, vec![(10, 20)]), granted(2, "l/b", 14, vec![(14, 16)])];
        let keys = vec![vec![("l/a".to_string(), 10)], vec![("l/b".to_string(), 14)]];
        assert!(check(&attempts, &keys)[0].contains("fencing: client 1 wrote with token 10 at revision 20"));
    }
}
