//! Bad input gets etcd's status code and exact message, and the next request succeeds.

use bytes::{Buf, BufMut};
use kv_api::etcdserverpb::request_op::Request;
use kv_api::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

use crate::harness::{raw_kv, Server};

fn put(key: &str, value: Vec<u8>) -> PutRequest {
    PutRequest { key: key.into(), value, ..Default::default() }
}

fn put_op(key: &str) -> RequestOp {
    RequestOp { request: Some(Request::RequestPut(put(key, b"v".to_vec()))) }
}

fn assert_status(r: Result<impl std::fmt::Debug, Status>, code: Code, msg: &str) {
    let s = r.expect_err("must fail");
    assert_eq!((s.code(), s.message()), (code, msg), "{s:?}");
}

#[tokio::test]
async fn each_bad_request_gets_etcds_error_and_the_next_one_succeeds() {
    let s = Server::start(&["--max-txn-ops", "4"]);
    let _ = s.client().await;
    let mut kv = raw_kv(&s.endpoint).await;
    let inv = Code::InvalidArgument;

    assert_status(kv.put(put("", b"v".to_vec())).await, inv, "etcdserver: key is not provided");
    next_ok(&mut kv).await;
    assert_status(kv.put(put("big", vec![7u8; 1_600 * 1024])).await, inv, "etcdserver: request is too large");
    next_ok(&mut kv).await;
    let many = TxnRequest { success: (0..5).map(|i| put_op(&format!("k{i}"))).collect(), ..Default::default() };
    assert_status(kv.txn(many).await, inv, "etcdserver: too many operations in txn request");
    next_ok(&mut kv).await;
    let four = TxnRequest { success: (0..4).map(|i| put_op(&format!("k{i}"))).collect(), ..Default::default() };
    assert!(kv.txn(four).await.unwrap().into_inner().succeeded, "at the limit is fine");
    let dup = TxnRequest { success: vec![put_op("d"), put_op("d")], ..Default::default() };
    assert_status(kv.txn(dup).await, inv, "etcdserver: duplicate key given in txn request");
    next_ok(&mut kv).await;

    let current = kv.range(RangeRequest { key: "ok".into(), ..Default::default() }).await.unwrap();
    let current = current.into_inner().header.unwrap().revision;
    let future = RangeRequest { key: "ok".into(), revision: current + 100, ..Default::default() };
    assert_status(kv.range(future).await, Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision");
    next_ok(&mut kv).await;
    kv.compact(kv_api::etcdserverpb::CompactionRequest { revision: current, physical: true }).await.unwrap();
    let old = RangeRequest { key: "ok".into(), revision: current - 1, ..Default::default() };
    assert_status(kv.range(old).await, Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted");
    next_ok(&mut kv).await;

    let iv = PutRequest { key: "missing".into(), ignore_value: true, ..Default::default() };
    assert_status(kv.put(iv).await, inv, "etcdserver: key not found");
    next_ok(&mut kv).await;
    let bad_sort = RangeRequest { key: "ok".into(), sort_order: 9, ..Default::default() };
    assert_status(kv.range(bad_sort).await, inv, "etcdserver: invalid sort option");
    next_ok(&mut kv).await;
    let lease = PutRequest { key: "l".into(), lease: 42, ..Default::default() };
    assert_status(kv.put(lease).await, Code::NotFound, "etcdserver: requested lease not found");
    next_ok(&mut kv).await;

    // A body that is not a protobuf PutRequest: refused before any handler runs, with the code
    // and text etcd's gRPC server (grpc-go) gives it; the server keeps serving.
    let garbage = raw_call(&s.endpoint, "/etcdserverpb.KV/Put", vec![0xff, 0xff, 0xff, 0xff, 0x0f]).await;
    let st = garbage.expect_err("undecodable body must fail");
    assert_eq!(st.code(), Code::Internal, "{st:?}");
    assert!(st.message().starts_with("grpc: error unmarshalling request: "), "{st:?}");
    next_ok(&mut kv).await;
}

async fn next_ok(kv: &mut kv_api::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>) {
    kv.put(put("ok", b"fine".to_vec())).await.expect("the request after a bad one succeeds");
}

/// Sends raw bytes as a unary call.
async fn raw_call(endpoint: &str, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let channel = tonic::transport::Channel::from_shared(endpoint.to_string()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let resp = grpc
        .unary(tonic::Request::new(body), tonic::codegen::http::uri::PathAndQuery::from_static(path), RawCodec)
        .await?;
    Ok(resp.into_inner())
}

#[derive(Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}
