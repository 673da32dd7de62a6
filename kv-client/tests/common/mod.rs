//! What the kv-client test files share.

use kv_server::{Running, ServerConfig};

/// A one-member server in this process on free ports, its data in `dir`.
pub async fn one_member(dir: &tempfile::TempDir) -> Running {
    let cfg = ServerConfig {
        data_dir: dir.path().join("data"),
        listen_client_urls: vec!["http://127.0.0.1:0".into()],
        listen_peer_urls: vec!["http://127.0.0.1:0".into()],
        ..ServerConfig::default()
    };
    kv_server::start(cfg).await.expect("server starts")
}
