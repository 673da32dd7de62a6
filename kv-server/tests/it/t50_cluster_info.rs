//! Maintenance.Status and Cluster.MemberList of a one-member store.

use crate::harness::Server;

#[tokio::test]
async fn status_and_member_list_describe_the_member() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    c.put("x", "y", None).await.unwrap();
    let st = c.status().await.unwrap();
    let me = st.header().unwrap().member_id();
    assert_eq!(st.leader(), me, "a one-member store leads itself");
    assert!(st.raft_index() >= 2 && st.raft_term() >= 1);
    assert!(st.db_size() > 0);
    assert_eq!(st.version(), "3.5.16");
    // The member publishes its attributes through Raft shortly after it starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let list = c.member_list().await.unwrap();
        let m = &list.members()[0];
        assert_eq!((list.members().len(), m.id()), (1, me));
        assert_eq!(m.peer_urls(), ["http://127.0.0.1:0"], "the harness lets one-member stores pick any peer port");
        if m.name() == "t1" {
            assert_eq!(m.client_urls(), std::slice::from_ref(&s.endpoint));
            assert!(!m.is_learner());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "attributes never published");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
