//! A linearizability failure cut down for a reader: of the keys whose history admits no
//! linearization, the one with the fewest operations, and of its operations the shortest run
//! that still admits none. A run of a minute holds tens of thousands of operations per key;
//! the contradiction usually sits in a handful.
//!
//! The run is found in two steps. First the shortest prefix (in call order) that is not
//! linearizable. Then its start moves forward, but only to a point where the key was quiet
//! (every earlier operation had returned before the next one was called): every dropped
//! operation then precedes every kept one in any linearization, so they can only have left
//! the register in some state, and the kept run is checked from *any* starting state. A run
//! that admits no linearization from any state admits none in the full history either.

use std::path::Path;

use porcupine::{Annotation, CheckResult, Model, Operation};

use crate::checks::{register_ops, RegOp, Register, CHECK_BUDGET};
use crate::history::Record;

/// The shortest non-linearizable run of operations on one key.
pub struct Failure {
    pub key: String,
    /// How many operations on the key were checked in all.
    pub key_ops: usize,
    /// The run's operations as indices into the history, in call order.
    pub ops: Vec<usize>,
    /// Whether the run starts at the key's first operation (checked from the absent key)
    /// rather than at a quiet point (checked from any state).
    pub from_start: bool,
    window: Vec<Operation<Register>>,
}

/// A fault to draw on the visualization's timeline: start and end in ns on the history's clock.
pub struct Marker {
    pub start_ns: i64,
    pub end_ns: Option<i64>,
    pub text: String,
}

/// The smallest failure in `history`, or `None` when every key's history is linearizable (or
/// the checker ran out of its budget on each that is not).
pub fn linearizability_failure(
    history: &[Record],
    revisions: &std::collections::BTreeMap<i64, (String, u64)>,
) -> Option<Failure> {
    let ops = register_ops(history, revisions);
    let mut part =
        Register::partition_operations(&ops).into_iter().filter(|p| illegal::<Register>(p)).min_by_key(Vec::len)?;
    part.sort_by_key(|o| o.call_time);
    let key = part[0].op.0.clone();
    let key_ops = part.len();

    // The shortest illegal prefix: part[..end].
    let (mut lo, mut hi) = (1, part.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if illegal::<Register>(&part[..mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let end = hi;
    // Quiet points before `end`: every operation called before returned before this one's call.
    let mut quiet = Vec::new();
    let mut latest_return = i64::MIN;
    for (i, o) in part[..end].iter().enumerate() {
        if i > 0 && latest_return < o.call_time {
            quiet.push(i);
        }
        latest_return = latest_return.max(o.return_time);
    }
    // The latest quiet point from which the run is still illegal from any state (monotone:
    // a run illegal from some point is illegal from every earlier one).
    let (mut lo, mut hi) = (0, quiet.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if illegal::<FromAnyState>(&relabel(&part[quiet[mid - 1]..end])) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let start = if lo == 0 { 0 } else { quiet[lo - 1] };
    let window = part[start..end].to_vec();
    Some(Failure {
        key,
        key_ops,
        ops: window.iter().filter_map(|o| o.metadata).collect(),
        from_start: start == 0,
        window,
    })
}

impl Failure {
    /// Writes porcupine's HTML view of the run (the longest partial linearizations, each
    /// operation's interval per client) with `markers` (the faults) on a timeline of their own.
    pub fn visualize(&self, markers: &[Marker], path: &Path) -> std::io::Result<()> {
        let annotations: Vec<Annotation> = markers
            .iter()
            .map(|m| Annotation {
                tag: Some("faults".into()),
                start: m.start_ns,
                end: m.end_ns,
                description: m.text.clone(),
                details: m.text.clone(),
                background_color: "#f6d3c4".into(),
                ..Annotation::default()
            })
            .collect();
        if self.from_start {
            let (_, mut info) = porcupine::check_operations_info_timeout::<Register>(&self.window, CHECK_BUDGET);
            info.add_annotations(annotations);
            porcupine::visualize_path::<Register>(&info, path)
        } else {
            let (_, mut info) =
                porcupine::check_operations_info_timeout::<FromAnyState>(&relabel(&self.window), CHECK_BUDGET);
            info.add_annotations(annotations);
            porcupine::visualize_path::<FromAnyState>(&info, path)
        }
    }
}

fn illegal<M: Model>(ops: &[Operation<M>]) -> bool {
    matches!(porcupine::check_operations_timeout::<M>(ops, CHECK_BUDGET), CheckResult::Illegal)
}

/// The register starting in a state nobody knows: the first operation that reveals it (a read,
/// or a compare-and-set that held) fixes it. Accepts every history [`Register`] accepts from
/// any starting value.
#[derive(Clone)]
struct FromAnyState;

impl Model for FromAnyState {
    /// `None`: not known yet.
    type State = Option<Option<u64>>;
    type Op = (String, RegOp);
    type Metadata = usize;

    fn init() -> Self::State {
        None
    }

    fn step(state: &Self::State, op: &Self::Op) -> (bool, Self::State) {
        match (state, &op.1) {
            (Some(known), _) => {
                let (legal, next) = Register::step(known, op);
                (legal, Some(next))
            }
            (None, RegOp::Put(v)) => (true, Some(Some(*v))),
            (None, RegOp::Get(seen)) => (true, Some(*seen)),
            (None, RegOp::Cas { value, ok: Some(true), .. }) => (true, Some(Some(*value))),
            (None, RegOp::Cas { .. }) => (true, None),
        }
    }

    fn describe_operation(op: &Self::Op) -> String {
        crate::checks::describe(&op.1)
    }

    fn describe_metadata(index: Option<&usize>) -> String {
        Register::describe_metadata(index)
    }
}

fn relabel(ops: &[Operation<Register>]) -> Vec<Operation<FromAnyState>> {
    ops.iter()
        .map(|o| Operation {
            client_id: o.client_id,
            call_time: o.call_time,
            return_time: o.return_time,
            op: o.op.clone(),
            metadata: o.metadata,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::history::{Level, Op};

    fn put(client: u32, key: &str, call: i64, ret: i64, value: u64, revision: i64) -> Record {
        Record {
            client,
            level: Level::Linearizable,
            member: 0,
            key: key.into(),
            call,
            ret: Some(ret),
            op: Op::Put { value, revision: Some(revision) },
        }
    }

    fn get(client: u32, key: &str, call: i64, ret: i64, seen: Option<u64>) -> Record {
        Record {
            client,
            level: Level::Linearizable,
            member: 0,
            key: key.into(),
            call,
            ret: Some(ret),
            op: Op::Get { seen: seen.map(|v| (v, 0)), revision: 0, min_revision: 0 },
        }
    }

    /// A long clean history on two keys, then one stale read on `b`: the failure is `b`, cut
    /// to the write the read missed and the read, checked from a quiet point.
    #[test]
    fn cuts_a_long_history_to_the_stale_read() {
        let mut history = Vec::new();
        let mut revisions = BTreeMap::new();
        let mut t = 0;
        for i in 0..200u64 {
            for key in ["a", "b"] {
                let rev = revisions.len() as i64 + 1;
                let value = i * 10 + u64::from(key == "b");
                history.push(put(1, key, t, t + 5, value, rev));
                revisions.insert(rev, (key.to_string(), value));
                history.push(get(2, key, t + 10, t + 15, Some(value)));
                t += 20;
            }
        }
        let rev = revisions.len() as i64 + 1;
        history.push(put(1, "b", t, t + 5, 9_999, rev));
        revisions.insert(rev, ("b".to_string(), 9_999));
        history.push(get(2, "b", t + 10, t + 15, Some(1991)));
        for i in 0..50u64 {
            let rev = revisions.len() as i64 + 1;
            let at = t + 20 + i as i64 * 20;
            history.push(put(1, "a", at, at + 5, 50_000 + i, rev));
            revisions.insert(rev, ("a".to_string(), 50_000 + i));
        }

        assert!(crate::checks::linearizable(&history, &revisions).is_err());
        let failure = linearizability_failure(&history, &revisions).expect("a failure");
        assert_eq!(failure.key, "b");
        assert_eq!(failure.key_ops, 402);
        assert!(!failure.from_start);
        let values: Vec<&Op> = failure.ops.iter().map(|&i| &history[i].op).collect();
        assert_eq!(values.len(), 2, "the run: {values:?}");
        assert!(matches!(values[0], Op::Put { value: 9_999, .. }));
        assert!(matches!(values[1], Op::Get { seen: Some((1991, _)), .. }));

        let dir = std::env::temp_dir().join(format!("kv-check-explain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let page = dir.join("b.html");
        failure.visualize(&[Marker { start_ns: t - 5, end_ns: Some(t + 30), text: "kill n1".into() }], &page).unwrap();
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(html.contains("kill n1"), "the fault is on the page");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Concurrent operations give no quiet point: the run starts at the key's first operation.
    #[test]
    fn without_a_quiet_point_the_run_starts_at_the_beginning() {
        let history = vec![put(1, "a", 0, 100, 1, 1), get(2, "a", 10, 200, Some(1)), get(3, "a", 150, 160, None)];
        let revisions = BTreeMap::from([(1, ("a".to_string(), 1))]);
        let failure = linearizability_failure(&history, &revisions).expect("a failure");
        assert!(failure.from_start);
        assert_eq!(failure.ops, vec![0, 1, 2]);
    }

    #[test]
    fn a_linearizable_history_has_no_failure() {
        let history = vec![put(1, "a", 0, 10, 1, 1), get(2, "a", 20, 30, Some(1))];
        let revisions = BTreeMap::from([(1, ("a".to_string(), 1))]);
        assert!(linearizability_failure(&history, &revisions).is_none());
    }
}
