//! Output of each verb, in etcdctl's simple format.

use kv_client::kv_api::etcdserverpb::{DeleteRangeResponse, PutResponse, RangeResponse, StatusResponse};
use kv_client::kv_api::mvccpb::KeyValue;

fn kv(kv: &KeyValue) {
    println!("{}", String::from_utf8_lossy(&kv.key));
    println!("{}", String::from_utf8_lossy(&kv.value));
}

pub fn put(r: &PutResponse) {
    println!("OK");
    if let Some(prev) = &r.prev_kv {
        kv(prev);
    }
}

pub fn range(r: &RangeResponse, count_only: bool) {
    if count_only {
        println!("{}", r.count);
        return;
    }
    for item in &r.kvs {
        kv(item);
    }
}

pub fn delete(r: &DeleteRangeResponse) {
    println!("{}", r.deleted);
    for item in &r.prev_kvs {
        kv(item);
    }
}

/// One line per endpoint: endpoint, member id, version, db size, is leader, raft term,
/// raft index, applied index, errors.
pub fn status(endpoint: &str, s: &StatusResponse) {
    let id = s.header.as_ref().map_or(0, |h| h.member_id);
    println!(
        "{endpoint}, {id:x}, {}, {} B, {}, {}, {}, {}, {}",
        s.version,
        s.db_size,
        s.leader == id,
        s.raft_term,
        s.raft_index,
        s.raft_applied_index,
        s.errors.join("; ")
    );
}
