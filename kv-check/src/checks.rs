//! The checks over what clients saw, one per guarantee. In the simulation they run after it
//! has returned: porcupine-rs uses threads and a wall-clock budget, neither of which exists
//! inside it. Each returns the first violation it finds, in words.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use porcupine::{CheckResult, Model, Operation};

use crate::history::{Level, Op, Record};

/// Every check of the history. `revisions` is the write of each revision as the converged
/// members store it ([`crate::audit`]).
pub fn check_all(history: &[Record], revisions: &BTreeMap<i64, (String, u64)>) -> Result<(), String> {
    only_written_values(history)?;
    session(history)?;
    bounded(history)?;
    linearizable(history, revisions)
}

/// A register per key: the last value written.
#[derive(Clone)]
pub(crate) struct Register;

/// What porcupine sees of an operation.
#[derive(Clone, Debug)]
pub(crate) enum RegOp {
    Put(u64),
    /// `ok == None`: the outcome is unknown. Placed at its linearization point it acts as a
    /// compare-and-set; "never happened" is the same as happening at the end of time.
    Cas {
        expect: Option<u64>,
        value: u64,
        ok: Option<bool>,
    },
    Get(Option<u64>),
}

impl Model for Register {
    type State = Option<u64>;
    type Op = (String, RegOp);
    /// The index of the operation's record in the history.
    type Metadata = usize;

    fn partition_operations(history: &[Operation<Self>]) -> Vec<Vec<Operation<Self>>> {
        let mut by_key: BTreeMap<String, Vec<Operation<Self>>> = BTreeMap::new();
        for op in history {
            by_key.entry(op.op.0.clone()).or_default().push(op.clone());
        }
        by_key.into_values().collect()
    }

    fn init() -> Option<u64> {
        None
    }

    fn step(state: &Option<u64>, op: &(String, RegOp)) -> (bool, Option<u64>) {
        match &op.1 {
            RegOp::Put(v) => (true, Some(*v)),
            RegOp::Cas { expect, value, ok } => {
                let holds = state == expect;
                let legal = ok.is_none_or(|ok| ok == holds);
                (legal, if holds { Some(*value) } else { *state })
            }
            RegOp::Get(seen) => (seen == state, *state),
        }
    }

    fn describe_operation(op: &(String, RegOp)) -> String {
        describe(&op.1)
    }

    fn describe_metadata(index: Option<&usize>) -> String {
        index.map_or_else(String::new, |i| format!("history[{i}]"))
    }
}

/// An operation as a reader of the report would write it.
pub(crate) fn describe(op: &RegOp) -> String {
    let v = |v: &Option<u64>| v.map_or_else(|| "absent".to_string(), |v| v.to_string());
    match op {
        RegOp::Put(value) => format!("put {value}"),
        RegOp::Cas { expect, value, ok } => {
            let outcome = match ok {
                Some(true) => "ok",
                Some(false) => "did not hold",
                None => "unknown",
            };
            format!("cas {} -> {value}: {outcome}", v(expect))
        }
        RegOp::Get(seen) => format!("get: {}", v(seen)),
    }
}

/// Writes of every client and the reads of the linearizable and lease clients form a
/// linearizable history per key ([`register_ops`] says which operations and when). A verdict
/// the checker cannot reach within its budget is a failure too; [`crate::explain`] cuts a
/// failure down for a reader.
pub fn linearizable(history: &[Record], revisions: &BTreeMap<i64, (String, u64)>) -> Result<(), String> {
    let ops = register_ops(history, revisions);
    match porcupine::check_operations_timeout::<Register>(&ops, CHECK_BUDGET) {
        CheckResult::Ok => Ok(()),
        CheckResult::Illegal => Err(format!(
            "linearizable/lease: the {} writes and reads are not linearizable (first differing key: {})",
            ops.len(),
            first_bad_key(&ops)
        )),
        CheckResult::Unknown => Err("linearizable/lease: the checker could not decide within its budget".into()),
    }
}

/// How long porcupine may search one history before the verdict is "could not decide".
pub(crate) const CHECK_BUDGET: Duration = Duration::from_secs(30);

/// What porcupine checks of `history`: the writes of every client and the reads of the
/// linearizable and lease clients, each with the index of its record as metadata.
///
/// A write with no answer is resolved from the converged members' revisions, which keeps the
/// search small: absent there, it never took effect (after convergence no entry can still
/// commit) and is left out, which is what placing it at the end of time would mean anyway;
/// present at revision r, it took effect before any write of a later revision was
/// acknowledged, since revisions are applied in order.
pub(crate) fn register_ops(history: &[Record], revisions: &BTreeMap<i64, (String, u64)>) -> Vec<Operation<Register>> {
    let stored_at: HashMap<u64, i64> = revisions.iter().map(|(rev, (_, v))| (*v, *rev)).collect();
    // For each revision, the earliest acknowledgement of a write at that revision or later.
    let mut acked: Vec<(i64, i64)> = history.iter().filter_map(|r| Some((r.acked_write()?.1, r.ret?))).collect();
    acked.sort_unstable();
    let mut earliest_after = acked.clone();
    for i in (0..earliest_after.len().saturating_sub(1)).rev() {
        earliest_after[i].1 = earliest_after[i].1.min(earliest_after[i + 1].1);
    }
    let done_before = |rev: i64| {
        let i = earliest_after.partition_point(|(r, _)| *r <= rev);
        earliest_after.get(i).map_or(i64::MAX, |(_, t)| *t)
    };
    history
        .iter()
        .enumerate()
        .filter_map(|(index, r)| {
            let mut return_time = r.ret.unwrap_or(i64::MAX);
            if r.ret.is_none() {
                let rev = stored_at.get(&r.written_value()?)?;
                return_time = done_before(*rev);
            }
            let op = match &r.op {
                Op::Put { value, .. } => RegOp::Put(*value),
                Op::Cas { expect, value, outcome } => {
                    // Unanswered but stored: it succeeded.
                    let ok = outcome.map(|(ok, _)| ok).or(Some(true));
                    RegOp::Cas { expect: *expect, value: *value, ok }
                }
                Op::Get { seen, .. } if matches!(r.level, Level::Linearizable | Level::Lease) => {
                    RegOp::Get(seen.map(|(v, _)| v))
                }
                Op::Get { .. } => return None,
            };
            Some(Operation {
                client_id: Some(r.client),
                call_time: r.call,
                return_time,
                op: (r.key.clone(), op),
                metadata: Some(index),
            })
        })
        .collect()
}

/// The first key whose own history is not linearizable, to point a reader at it.
fn first_bad_key(ops: &[Operation<Register>]) -> String {
    for part in Register::partition_operations(ops) {
        if let CheckResult::Illegal = porcupine::check_operations_timeout::<Register>(&part, CHECK_BUDGET) {
            return part[0].op.0.clone();
        }
    }
    "none alone".into()
}

/// Every read, at any level, returns a value some client wrote, at the revision it was
/// acknowledged at when that is known (no invented, torn or misplaced values).
pub fn only_written_values(history: &[Record]) -> Result<(), String> {
    let mut writes: HashMap<u64, Option<i64>> = HashMap::new();
    for r in history {
        if let Some(v) = r.written_value() {
            writes.insert(v, r.acked_write().map(|(_, rev)| rev));
        }
    }
    for r in history {
        if let Op::Get { seen: Some((v, mod_rev)), .. } = r.op {
            match writes.get(&v) {
                None => {
                    return Err(format!("{:?} client {} read {}={v}, which nobody wrote", r.level, r.client, r.key))
                }
                Some(Some(rev)) if *rev != mod_rev => {
                    return Err(format!(
                        "{:?} client {} read {}={v} at mod revision {mod_rev}, but it was written at {rev}",
                        r.level, r.client, r.key
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Session clients read their own writes and never go back in time: each read of a key is at
/// least as new as the client's last acknowledged write of it and its last read of it, and the
/// response is at least at the revision the client asked for.
pub fn session(history: &[Record]) -> Result<(), String> {
    let mut own: HashMap<(u32, &str), i64> = HashMap::new();
    let mut seen: HashMap<(u32, &str), i64> = HashMap::new();
    for r in history.iter().filter(|r| r.level == Level::Session) {
        let at = (r.client, r.key.as_str());
        if let Some((_, rev)) = r.acked_write() {
            own.insert(at, rev);
        }
        if let Op::Get { seen: got, revision, min_revision } = r.op {
            let mod_rev = got.map_or(0, |(_, m)| m);
            let wrote = own.get(&at).copied().unwrap_or(0);
            let read = seen.get(&at).copied().unwrap_or(0);
            if revision < min_revision {
                return Err(format!(
                    "session client {}: asked for revision {min_revision}, answered at {revision}",
                    r.client
                ));
            }
            if mod_rev < wrote {
                return Err(format!(
                    "session client {}: read {} at mod revision {mod_rev} after its own write at {wrote}",
                    r.client, r.key
                ));
            }
            if mod_rev < read {
                return Err(format!(
                    "session client {}: read {} at mod revision {mod_rev} after reading it at {read}",
                    r.client, r.key
                ));
            }
            seen.insert(at, mod_rev);
        }
    }
    Ok(())
}

/// A bounded read is never older than its bound: it reflects every write of its key that was
/// acknowledged more than the bound before the read began. No allowance for message delay:
/// members measure staleness on their own clocks (docs/consistency.md).
pub fn bounded(history: &[Record]) -> Result<(), String> {
    let horizon = crate::history::STALENESS_BOUND.as_nanos() as i64;
    // Acknowledged writes per key as (acknowledged at, revision), in acknowledgement order.
    let mut acked: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for r in history {
        if let (Some((_, rev)), Some(ret)) = (r.acked_write(), r.ret) {
            acked.entry(r.key.as_str()).or_default().push((ret, rev));
        }
    }
    for list in acked.values_mut() {
        list.sort_unstable();
    }
    for r in history.iter().filter(|r| r.level == Level::Bounded) {
        if let Op::Get { seen, .. } = r.op {
            let mod_rev = seen.map_or(0, |(_, m)| m);
            let must = acked
                .get(r.key.as_str())
                .map(|l| {
                    l.iter().take_while(|(ret, _)| *ret < r.call - horizon).map(|(_, rev)| *rev).max().unwrap_or(0)
                })
                .unwrap_or(0);
            if mod_rev < must {
                return Err(format!(
                    "bounded client {}: read {} at mod revision {mod_rev} at {} ms, but revision {must} was acknowledged \
                     more than {} ms earlier",
                    r.client,
                    r.key,
                    r.call / 1_000_000,
                    horizon / 1_000_000
                ));
            }
        }
    }
    Ok(())
}

/// Every acknowledged write is the write of its revision in `revisions` (what the converged
/// members store), and every stored value was written by a client, to that key. Up to five
/// problems, in words.
pub fn stored(history: &[Record], revisions: &BTreeMap<i64, (String, u64)>) -> Vec<String> {
    let mut problems = Vec::new();
    let written: HashMap<u64, &Record> = history.iter().filter_map(|r| Some((r.written_value()?, r))).collect();
    for r in history {
        if let Some((value, rev)) = r.acked_write() {
            let stored = revisions.get(&rev);
            if stored != Some(&(r.key.clone(), value)) {
                problems.push(format!(
                    "acknowledged write {}={value} at revision {rev} is lost: that revision holds {stored:?}",
                    r.key
                ));
            }
        }
    }
    for (rev, (key, value)) in revisions {
        if written.get(value).is_none_or(|r| r.key != *key) {
            problems.push(format!("revision {rev} holds {key}={value}, which no client wrote"));
        }
    }
    problems.truncate(5);
    problems
}
