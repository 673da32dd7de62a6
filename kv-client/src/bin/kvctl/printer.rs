//! Output of every verb, apart from the verbs: etcdctl's `simple` format, `json`, or `table`.

use kv_client::kv_api::etcdserverpb::response_op::Response as OpResponse;
use kv_client::kv_api::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeResponse,
    LeaseTimeToLiveResponse, Member, PutResponse, RangeResponse, ResponseHeader, StatusResponse, TxnResponse,
};
use kv_client::kv_api::mvccpb::event::EventType;
use kv_client::kv_api::mvccpb::{Event, KeyValue};
use serde_json::{json, Value};

/// `-w simple|json|table`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Simple,
    Json,
    Table,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn header_json(h: &Option<ResponseHeader>) -> Value {
    let h = h.unwrap_or_default();
    json!({"cluster_id": h.cluster_id, "member_id": h.member_id, "revision": h.revision, "raft_term": h.raft_term})
}

fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": text(&kv.key), "value": text(&kv.value), "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision, "version": kv.version, "lease": kv.lease,
    })
}

fn print_json(v: Value) {
    println!("{v}");
}

/// An ASCII table like etcdctl's.
fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let rule = format!("+{}+", width.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
    let line = |cells: Vec<String>| {
        let cells: Vec<String> = cells.iter().zip(&width).map(|(c, w)| format!(" {c:<w$} ")).collect();
        format!("|{}|", cells.join("|"))
    };
    println!("{rule}");
    println!("{}", line(head.iter().map(|h| h.to_string()).collect()));
    println!("{rule}");
    for r in rows {
        println!("{}", line(r.clone()));
    }
    println!("{rule}");
}

fn kv_simple(kv: &KeyValue, keys_only: bool) {
    println!("{}", text(&kv.key));
    if !keys_only {
        println!("{}", text(&kv.value));
    }
}

pub fn put(f: Format, r: &PutResponse) {
    match f {
        Format::Json => {
            print_json(json!({"header": header_json(&r.header), "prev_kv": r.prev_kv.as_ref().map(kv_json)}))
        }
        _ => {
            println!("OK");
            if let Some(prev) = &r.prev_kv {
                kv_simple(prev, false);
            }
        }
    }
}

pub fn range(f: Format, r: &RangeResponse, count_only: bool, keys_only: bool) {
    match f {
        Format::Json => print_json(json!({
            "header": header_json(&r.header), "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>(),
            "more": r.more, "count": r.count,
        })),
        _ if count_only => println!("{}", r.count),
        Format::Table => {
            let rows: Vec<Vec<String>> = r.kvs.iter().map(|kv| vec![text(&kv.key), text(&kv.value)]).collect();
            table(&["KEY", "VALUE"], &rows);
        }
        Format::Simple => r.kvs.iter().for_each(|kv| kv_simple(kv, keys_only)),
    }
}

pub fn delete(f: Format, r: &DeleteRangeResponse) {
    match f {
        Format::Json => print_json(json!({
            "header": header_json(&r.header), "deleted": r.deleted,
            "prev_kvs": r.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
        })),
        _ => {
            println!("{}", r.deleted);
            r.prev_kvs.iter().for_each(|kv| kv_simple(kv, false));
        }
    }
}

pub fn txn(f: Format, r: &TxnResponse) {
    if f == Format::Json {
        let ops: Vec<Value> = r
            .responses
            .iter()
            .map(|op| match &op.response {
                Some(OpResponse::ResponsePut(p)) => json!({"put": {"prev_kv": p.prev_kv.as_ref().map(kv_json)}}),
                Some(OpResponse::ResponseRange(g)) => {
                    json!({"range": {"kvs": g.kvs.iter().map(kv_json).collect::<Vec<_>>(), "count": g.count}})
                }
                Some(OpResponse::ResponseDeleteRange(d)) => json!({"delete_range": {"deleted": d.deleted}}),
                Some(OpResponse::ResponseTxn(_)) => json!({"txn": {}}),
                None => Value::Null,
            })
            .collect();
        return print_json(json!({"header": header_json(&r.header), "succeeded": r.succeeded, "responses": ops}));
    }
    println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
    for op in &r.responses {
        println!();
        match &op.response {
            Some(OpResponse::ResponsePut(p)) => put(Format::Simple, p),
            Some(OpResponse::ResponseRange(g)) => range(Format::Simple, g, false, false),
            Some(OpResponse::ResponseDeleteRange(d)) => delete(Format::Simple, d),
            Some(OpResponse::ResponseTxn(t)) => txn(Format::Simple, t),
            None => {}
        }
    }
}

pub fn compaction(f: Format, r: &CompactionResponse, rev: i64) {
    match f {
        Format::Json => print_json(json!({"header": header_json(&r.header), "compacted": rev})),
        _ => println!("compacted revision {rev}"),
    }
}

/// One row per endpoint: endpoint, member id, version, db size, is leader, raft term, raft
/// index, applied index, errors.
pub fn statuses(f: Format, rows: &[(String, StatusResponse)]) {
    let cells = |ep: &str, s: &StatusResponse| {
        let id = s.header.as_ref().map_or(0, |h| h.member_id);
        vec![
            ep.to_string(),
            format!("{id:x}"),
            s.version.clone(),
            format!("{} B", s.db_size),
            (s.leader == id).to_string(),
            s.raft_term.to_string(),
            s.raft_index.to_string(),
            s.raft_applied_index.to_string(),
            s.errors.join("; "),
        ]
    };
    match f {
        Format::Json => print_json(Value::Array(
            rows.iter()
                .map(|(ep, s)| {
                    json!({
                        "endpoint": ep, "header": header_json(&s.header), "version": s.version, "db_size": s.db_size,
                        "leader": s.leader, "raft_term": s.raft_term, "raft_index": s.raft_index,
                        "raft_applied_index": s.raft_applied_index, "errors": s.errors,
                        "read_index_rounds": s.read_index_rounds, "snapshots_installed": s.snapshots_installed,
                        "receiving_snapshot": s.receiving_snapshot,
                    })
                })
                .collect(),
        )),
        Format::Table => table(
            &[
                "ENDPOINT",
                "ID",
                "VERSION",
                "DB SIZE",
                "IS LEADER",
                "RAFT TERM",
                "RAFT INDEX",
                "RAFT APPLIED INDEX",
                "ERRORS",
            ],
            &rows.iter().map(|(ep, s)| cells(ep, s)).collect::<Vec<_>>(),
        ),
        Format::Simple => rows.iter().for_each(|(ep, s)| println!("{}", cells(ep, s).join(", "))),
    }
}

/// One row per endpoint: healthy or not, and how long the check took.
pub fn health(f: Format, rows: &[(String, Result<std::time::Duration, String>)]) {
    match f {
        Format::Json => print_json(Value::Array(
            rows.iter()
                .map(|(ep, r)| match r {
                    Ok(took) => json!({"endpoint": ep, "health": true, "took": format!("{took:?}")}),
                    Err(e) => json!({"endpoint": ep, "health": false, "error": e}),
                })
                .collect(),
        )),
        Format::Table => table(
            &["ENDPOINT", "HEALTH", "TOOK", "ERROR"],
            &rows
                .iter()
                .map(|(ep, r)| match r {
                    Ok(t) => vec![ep.clone(), "true".into(), format!("{t:?}"), String::new()],
                    Err(e) => vec![ep.clone(), "false".into(), String::new(), e.clone()],
                })
                .collect::<Vec<_>>(),
        ),
        Format::Simple => {
            for (ep, r) in rows {
                match r {
                    Ok(t) => println!("{ep} is healthy: successfully committed proposal: took = {t:?}"),
                    Err(e) => println!("{ep} is unhealthy: failed to commit proposal: {e}"),
                }
            }
        }
    }
}

pub fn members(f: Format, members: &[Member]) {
    let cells = |m: &Member| {
        vec![
            format!("{:x}", m.id),
            if m.name.is_empty() { "unstarted" } else { "started" }.to_string(),
            m.name.clone(),
            m.peer_ur_ls.join(","),
            m.client_ur_ls.join(","),
            m.is_learner.to_string(),
        ]
    };
    match f {
        Format::Json => print_json(Value::Array(
            members
                .iter()
                .map(|m| {
                    json!({"id": m.id, "name": m.name, "peer_urls": m.peer_ur_ls, "client_urls": m.client_ur_ls, "is_learner": m.is_learner})
                })
                .collect(),
        )),
        Format::Table => table(
            &["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"],
            &members.iter().map(cells).collect::<Vec<_>>(),
        ),
        Format::Simple => members.iter().for_each(|m| println!("{}", cells(m).join(", "))),
    }
}

/// Watch events: etcdctl's simple form (the type, then the previous key and value when asked
/// for, then the key and value), or one JSON object per event.
pub fn watch_events(f: Format, events: &[Event]) {
    for e in events {
        let kind = if e.r#type == EventType::Delete as i32 { "DELETE" } else { "PUT" };
        let kv = e.kv.clone().unwrap_or_default();
        match f {
            Format::Json => print_json(json!({
                "type": kind, "kv": kv_json(&kv), "prev_kv": e.prev_kv.as_ref().map(kv_json),
            })),
            Format::Simple | Format::Table => {
                println!("{kind}");
                if let Some(prev) = &e.prev_kv {
                    kv_simple(prev, false);
                }
                kv_simple(&kv, false);
            }
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

pub fn lease_granted(f: Format, r: &LeaseGrantResponse) {
    match f {
        Format::Json => print_json(json!({"header": header_json(&r.header), "ID": r.id, "TTL": r.ttl})),
        _ => println!("lease {:016x} granted with TTL({}s)", r.id, r.ttl),
    }
}

pub fn lease_revoked(f: Format, id: i64, r: &LeaseRevokeResponse) {
    match f {
        Format::Json => print_json(json!({"header": header_json(&r.header)})),
        _ => println!("lease {id:016x} revoked"),
    }
}

pub fn lease_kept(f: Format, id: i64, ttl: i64) {
    match f {
        Format::Json => print_json(json!({"ID": id, "TTL": ttl})),
        _ => println!("lease {id:016x} keepalived with TTL({ttl})"),
    }
}

pub fn lease_ttl(f: Format, r: &LeaseTimeToLiveResponse) {
    let keys: Vec<String> = r.keys.iter().map(|k| text(k)).collect();
    match f {
        Format::Json => print_json(json!({
            "header": header_json(&r.header), "ID": r.id, "TTL": r.ttl, "granted-ttl": r.granted_ttl, "keys": keys,
        })),
        _ if r.ttl == -1 => println!("lease {:016x} already expired", r.id),
        _ if keys.is_empty() => {
            println!("lease {:016x} granted with TTL({}s), remaining({}s)", r.id, r.granted_ttl, r.ttl)
        }
        _ => println!(
            "lease {:016x} granted with TTL({}s), remaining({}s), attached keys([{}])",
            r.id,
            r.granted_ttl,
            r.ttl,
            keys.join(" ")
        ),
    }
}

pub fn leases(f: Format, r: &LeaseLeasesResponse) {
    match f {
        Format::Json => {
            let ids: Vec<i64> = r.leases.iter().map(|l| l.id).collect();
            print_json(json!({"header": header_json(&r.header), "leases": ids}))
        }
        _ => {
            println!("found {} leases", r.leases.len());
            for l in &r.leases {
                println!("{:016x}", l.id);
            }
        }
    }
}
