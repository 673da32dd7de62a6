//! What the clients saw, as a history of operations on single-value registers (one per key),
//! and its checks. Checking happens after the simulation returns: porcupine-rs uses threads
//! and a wall-clock budget, neither of which exists inside the simulation.

use std::collections::BTreeMap;
use std::time::Duration;

use porcupine::{CheckResult, Model, Operation};
use sha2::{Digest, Sha256};

/// One client operation: its call and return times (ns since the start), and what it did.
/// `ret == None`: no answer (timeout or error), so its effect is unknown.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    pub client: u32,
    pub key: String,
    pub call: i64,
    pub ret: Option<i64>,
    pub kind: Kind,
}

/// A put of a unique value, or a read that returned a value (None: the key was absent).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Put(u64),
    Get(Option<u64>),
}

/// A register per key: the last value put.
#[derive(Clone)]
struct Register;

impl Model for Register {
    type State = Option<u64>;
    type Op = (String, Kind);
    type Metadata = ();

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

    fn step(state: &Option<u64>, op: &(String, Kind)) -> (bool, Option<u64>) {
        match &op.1 {
            Kind::Put(v) => (true, Some(*v)),
            Kind::Get(seen) => (seen == state, *state),
        }
    }
}

/// Checks that the history is linearizable. A put with no answer may have happened at any
/// time after its call (its return is the end of time); a read with no answer says nothing.
/// A verdict the checker cannot reach within its budget is a failure too.
pub fn check_linearizable(history: &[Record]) -> Result<(), String> {
    let ops: Vec<Operation<Register>> = history
        .iter()
        .filter(|r| r.ret.is_some() || matches!(r.kind, Kind::Put(_)))
        .map(|r| Operation {
            client_id: Some(r.client),
            call_time: r.call,
            return_time: r.ret.unwrap_or(i64::MAX),
            op: (r.key.clone(), r.kind.clone()),
            metadata: None,
        })
        .collect();
    match porcupine::check_operations_timeout::<Register>(&ops, Duration::from_secs(30)) {
        CheckResult::Ok => Ok(()),
        CheckResult::Illegal => Err(format!("history of {} operations is not linearizable", ops.len())),
        CheckResult::Unknown => Err("the checker could not decide within its budget".into()),
    }
}

/// A hash over the whole history and the final state, printed as the run's fingerprint.
pub fn digest(history: &[Record], final_state: &str) -> String {
    let mut h = Sha256::new();
    for r in history {
        h.update(format!("{r:?}\n").as_bytes());
    }
    h.update(final_state.as_bytes());
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}
