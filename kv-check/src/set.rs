//! The set workload's history and its check. Clients add elements (each its own key, named by
//! the client and its sequence number) and read the whole set; at the end every member's set
//! is read once more. The promises:
//!
//! - every acknowledged add is in the final set, on every member;
//! - nothing is in any set that no client tried to add;
//! - a read (linearizable) holds every element whose add was acknowledged before the read was
//!   sent, and no element whose add was sent after the read's answer came.
//!
//! An add without an answer may or may not be in the set, both are fine.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Elements as (client, sequence number).
pub type Element = (u32, u64);

/// One operation of a set client; times in ns since the workload began, `ret == None` when no
/// answer came.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRecord {
    pub client: u32,
    pub call: i64,
    pub ret: Option<i64>,
    pub op: SetOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetOp {
    /// Add this client's element `seq`.
    Add { seq: u64 },
    /// A read of the whole set: per client, the ranges of sequence numbers seen (inclusive).
    Read { seen: Ranges },
}

/// A set of elements as inclusive ranges of sequence numbers per client: a client's adds are
/// sequential, so a read of thousands of elements is a few ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranges(pub BTreeMap<u32, Vec<(u64, u64)>>);

impl Ranges {
    pub fn from_elements(elements: impl IntoIterator<Item = Element>) -> Ranges {
        let sorted: BTreeSet<Element> = elements.into_iter().collect();
        let mut out: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        for (client, seq) in sorted {
            let ranges = out.entry(client).or_default();
            match ranges.last_mut() {
                Some((_, to)) if *to + 1 == seq => *to = seq,
                _ => ranges.push((seq, seq)),
            }
        }
        Ranges(out)
    }

    pub fn contains(&self, (client, seq): Element) -> bool {
        self.0.get(&client).is_some_and(|r| {
            let i = r.partition_point(|(from, _)| *from <= seq);
            i > 0 && r[i - 1].1 >= seq
        })
    }

    pub fn elements(&self) -> impl Iterator<Item = Element> + '_ {
        self.0.iter().flat_map(|(c, r)| r.iter().flat_map(move |(from, to)| (*from..=*to).map(move |s| (*c, s))))
    }

    pub fn len(&self) -> u64 {
        self.0.values().flatten().map(|(from, to)| to - from + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The key an element is stored under: `prefix` then client and sequence number.
pub fn key(prefix: &str, (client, seq): Element) -> String {
    format!("{prefix}{client:03}/{seq:010}")
}

/// The element a key names, if it is one.
pub fn element(prefix: &str, key: &str) -> Option<Element> {
    let (client, seq) = key.strip_prefix(prefix)?.split_once('/')?;
    Some((client.parse().ok()?, seq.parse().ok()?))
}

/// Checks the history against the final set of each member (`finals`, by member name). Up to
/// five problems, in words.
pub fn check(history: &[SetRecord], finals: &[(String, Ranges)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut acked: Vec<(i64, Element)> = Vec::new();
    let mut sent: BTreeMap<Element, i64> = BTreeMap::new();
    for r in history {
        if let SetOp::Add { seq } = r.op {
            sent.insert((r.client, seq), r.call);
            if let Some(ret) = r.ret {
                acked.push((ret, (r.client, seq)));
            }
        }
    }
    acked.sort_unstable();
    for (member, set) in finals {
        let lost: Vec<Element> = acked.iter().map(|(_, e)| *e).filter(|e| !set.contains(*e)).collect();
        if !lost.is_empty() {
            problems.push(format!(
                "{member}: {} acknowledged adds missing from the final set, first {}",
                lost.len(),
                show(lost[0])
            ));
        }
        if let Some(e) = set.elements().find(|e| !sent.contains_key(e)) {
            problems.push(format!("{member}: the final set holds {}, which no client added", show(e)));
        }
    }
    for r in history {
        let (SetOp::Read { seen }, Some(ret)) = (&r.op, r.ret) else { continue };
        let missing = acked.iter().take_while(|(at, _)| *at < r.call).find(|(_, e)| !seen.contains(*e));
        if let Some((at, e)) = missing {
            problems.push(format!(
                "client {} read the set at {:.3} s without {}, acknowledged at {:.3} s",
                r.client,
                secs(r.call),
                show(*e),
                secs(*at)
            ));
        }
        if let Some(e) = seen.elements().find(|e| sent.get(e).is_none_or(|call| *call > ret)) {
            problems.push(format!(
                "client {} read the set at {:.3} s with {}, which {}",
                r.client,
                secs(r.call),
                show(e),
                match sent.get(&e) {
                    Some(call) => format!("was only added at {:.3} s, after the answer", secs(*call)),
                    None => "no client added".to_string(),
                }
            ));
        }
        if problems.len() >= 5 {
            break;
        }
    }
    problems.truncate(5);
    problems
}

fn show((client, seq): Element) -> String {
    format!("element {client}/{seq}")
}

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(client: u32, seq: u64, call: i64, ret: Option<i64>) -> SetRecord {
        SetRecord { client, call, ret, op: SetOp::Add { seq } }
    }

    fn read(client: u32, call: i64, ret: i64, elements: &[Element]) -> SetRecord {
        SetRecord { client, call, ret: Some(ret), op: SetOp::Read { seen: Ranges::from_elements(elements.to_vec()) } }
    }

    #[test]
    fn ranges_hold_exactly_their_elements() {
        let r = Ranges::from_elements([(1, 0), (1, 1), (1, 2), (1, 5), (2, 7)]);
        assert_eq!(r.0[&1], vec![(0, 2), (5, 5)]);
        assert_eq!(r.len(), 5);
        for e in [(1, 0), (1, 2), (1, 5), (2, 7)] {
            assert!(r.contains(e), "{e:?}");
        }
        for e in [(1, 3), (1, 6), (2, 6), (3, 0)] {
            assert!(!r.contains(e), "{e:?}");
        }
        assert_eq!(r.elements().count(), 5);
        assert_eq!(element("s/", &key("s/", (4, 12))), Some((4, 12)));
        assert_eq!(element("s/", "t/004/12"), None);
    }

    #[test]
    fn a_correct_history_passes_and_unknown_adds_may_go_either_way() {
        let history = vec![
            add(1, 0, 0, Some(10)),
            add(1, 1, 20, None),
            add(2, 0, 25, Some(30)),
            read(3, 40, 50, &[(1, 0), (2, 0)]),
            add(2, 1, 45, Some(60)),
            read(3, 55, 65, &[(1, 0), (1, 1), (2, 0), (2, 1)]),
        ];
        let finals = vec![("n1".to_string(), Ranges::from_elements([(1, 0), (2, 0), (2, 1)]))];
        assert_eq!(check(&history, &finals), Vec::<String>::new());
    }

    #[test]
    fn lost_invented_stale_and_future_elements_are_found() {
        let history = vec![add(1, 0, 0, Some(10)), add(1, 1, 100, Some(110)), read(3, 20, 30, &[])];
        let lost = vec![("n1".to_string(), Ranges::from_elements([(1, 1)]))];
        assert!(check(&history, &lost)[0].contains("1 acknowledged adds missing"), "{:?}", check(&history, &lost));
        let invented = vec![("n1".to_string(), Ranges::from_elements([(1, 0), (1, 1), (9, 9)]))];
        assert!(check(&history, &invented)[0].contains("no client added"));

        let finals = vec![("n1".to_string(), Ranges::from_elements([(1, 0), (1, 1)]))];
        let stale = check(&history, &finals);
        assert_eq!(stale.len(), 1);
        assert!(stale[0].contains("without element 1/0"), "{stale:?}");

        let mut future = history.clone();
        future[2] = read(3, 20, 30, &[(1, 0), (1, 1)]);
        let found = check(&future, &finals);
        assert!(found[0].contains("element 1/1, which was only added at 0.000 s, after the answer"), "{found:?}");
    }
}
