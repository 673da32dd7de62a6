//! Member and cluster identities, computed the same way by every member from the cluster flags.
//!
//! member id = first 8 bytes (big-endian) of SHA-256(token ‖ the member's sorted peer URLs);
//! cluster id = first 8 bytes of SHA-256(token ‖ sorted member ids, each 8 bytes big-endian).
//! The member id is also the openraft `NodeId` and etcd's `member_id`.

use sha2::{Digest, Sha256};

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// The id of the member whose peer URLs are `peer_urls`, in the cluster named by `token`.
pub fn member_id(token: &str, peer_urls: &[String]) -> u64 {
    let mut urls: Vec<&String> = peer_urls.iter().collect();
    urls.sort();
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    for u in urls {
        h.update(u.as_bytes());
    }
    first_u64(&h.finalize())
}

/// The id of the cluster made of `member_ids`.
pub fn cluster_id(token: &str, member_ids: impl IntoIterator<Item = u64>) -> u64 {
    let mut ids: Vec<u64> = member_ids.into_iter().collect();
    ids.sort_unstable();
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_ignore_url_order_and_depend_on_token() {
        let a = vec!["http://b:2380".to_string(), "http://a:2380".to_string()];
        let b = vec!["http://a:2380".to_string(), "http://b:2380".to_string()];
        assert_eq!(member_id("t", &a), member_id("t", &b));
        assert_ne!(member_id("t", &a), member_id("u", &a));
        assert_eq!(cluster_id("t", [3, 1, 2]), cluster_id("t", [1, 2, 3]));
        assert_ne!(cluster_id("t", [1, 2]), cluster_id("t", [1, 2, 3]));
    }
}
