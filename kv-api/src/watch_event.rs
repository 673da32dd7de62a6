//! etcd's `mvccpb.Event`, written by hand rather than generated, so that a server can encode an
//! event once and send those bytes to every watcher of it ([`Event::shared`]): with thousands
//! of watchers of one prefix, encoding would otherwise be paid once per watcher. On the wire
//! it is the message `kv.proto` describes; clients decode it into its fields as usual.

use std::fmt;
use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::mvccpb::KeyValue;

/// The nested types of [`Event`], where generated code would put them.
pub mod event {
    /// Kind of change.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum EventType {
        /// The key was written (created or updated).
        Put = 0,
        /// The key was deleted (explicitly, by a range delete, or by its lease expiring).
        Delete = 1,
    }

    impl EventType {
        /// The name in the `.proto` file.
        pub fn as_str_name(&self) -> &'static str {
            match self {
                EventType::Put => "PUT",
                EventType::Delete => "DELETE",
            }
        }
    }
}

/// One change of one key, as a watch delivers it.
#[derive(Clone, Default)]
pub struct Event {
    /// Put or delete ([`event::EventType`]).
    pub r#type: i32,
    /// For a put, the key after the write; for a delete, the key with its deletion revision.
    pub kv: Option<KeyValue>,
    /// The key just before this change, when the watcher asked for it.
    pub prev_kv: Option<KeyValue>,
    /// Set by [`Event::shared`]: the event's encoding, sent as it is; the fields are then empty.
    encoded: Option<Arc<[u8]>>,
}

const TYPE: u32 = 1;
const KV: u32 = 2;
const PREV_KV: u32 = 3;

impl Event {
    pub fn new(kind: event::EventType, kv: Option<KeyValue>, prev_kv: Option<KeyValue>) -> Event {
        Event { r#type: kind as i32, kv, prev_kv, encoded: None }
    }

    /// The kind of change (an unknown number reads as a put, as generated code does).
    pub fn r#type(&self) -> event::EventType {
        event::EventType::try_from(self.r#type).unwrap_or(event::EventType::Put)
    }

    pub fn set_type(&mut self, kind: event::EventType) {
        self.r#type = kind as i32;
    }

    /// This event encoded once, for a server to send to many watchers: cloning it shares the
    /// bytes, and encoding it copies them. Its fields read as empty (the encoding is all it
    /// holds), so it is only for sending.
    pub fn shared(&self) -> Event {
        let encoded = self.encoded.clone().unwrap_or_else(|| self.encode_to_vec().into());
        Event { encoded: Some(encoded), ..Event::default() }
    }

    /// Whether this is an encoding made by [`Event::shared`].
    pub fn is_shared(&self) -> bool {
        self.encoded.is_some()
    }

    /// The event with its fields, whether or not it was shared: for an in-process receiver,
    /// which gets the server's events without an encoding in between.
    pub fn unshared(mut self) -> Event {
        self.unshare();
        self
    }

    /// Turns a shared event back into its fields (before decoding more into it).
    fn unshare(&mut self) {
        if let Some(bytes) = self.encoded.take() {
            // The bytes are our own encoding of a valid event.
            let fields = Event::decode(&bytes[..]).expect("a shared event decodes");
            *self = fields;
        }
    }
}

impl Message for Event {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(bytes) = &self.encoded {
            buf.put_slice(bytes);
            return;
        }
        if self.r#type != 0 {
            encoding::int32::encode(TYPE, &self.r#type, buf);
        }
        if let Some(kv) = &self.kv {
            encoding::message::encode(KV, kv, buf);
        }
        if let Some(prev) = &self.prev_kv {
            encoding::message::encode(PREV_KV, prev, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        self.unshare();
        match tag {
            TYPE => encoding::int32::merge(wire_type, &mut self.r#type, buf, ctx),
            KV => encoding::message::merge(wire_type, self.kv.get_or_insert_with(KeyValue::default), buf, ctx),
            PREV_KV => {
                encoding::message::merge(wire_type, self.prev_kv.get_or_insert_with(KeyValue::default), buf, ctx)
            }
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        if let Some(bytes) = &self.encoded {
            return bytes.len();
        }
        let kind = if self.r#type != 0 { encoding::int32::encoded_len(TYPE, &self.r#type) } else { 0 };
        kind + self.kv.as_ref().map_or(0, |kv| encoding::message::encoded_len(KV, kv))
            + self.prev_kv.as_ref().map_or(0, |p| encoding::message::encoded_len(PREV_KV, p))
    }

    fn clear(&mut self) {
        *self = Event::default();
    }
}

/// Equal when they encode alike (a shared event equals the event it was made from).
impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        match (&self.encoded, &other.encoded) {
            (None, None) => (self.r#type, &self.kv, &self.prev_kv) == (other.r#type, &other.kv, &other.prev_kv),
            _ => self.encode_to_vec() == other.encode_to_vec(),
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.encoded {
            Some(bytes) => write!(f, "Event(shared, {} bytes)", bytes.len()),
            None => f
                .debug_struct("Event")
                .field("type", &self.r#type())
                .field("kv", &self.kv)
                .field("prev_kv", &self.prev_kv)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdserverpb::WatchResponse;

    fn sample() -> Event {
        let kv = |rev: i64, value: &str| KeyValue {
            key: b"config/a".to_vec(),
            value: value.into(),
            create_revision: 2,
            mod_revision: rev,
            version: rev - 1,
            lease: 0,
        };
        Event::new(event::EventType::Delete, Some(kv(7, "")), Some(kv(6, "old")))
    }

    /// The encoding is the one kv.proto describes: the fields, numbered 1 to 3, as generated
    /// code would write them (a default type is left out).
    #[test]
    fn the_hand_written_encoding_is_the_protos() {
        let e = sample();
        let mut expected = Vec::new();
        encoding::int32::encode(1, &1, &mut expected);
        encoding::message::encode(2, e.kv.as_ref().unwrap(), &mut expected);
        encoding::message::encode(3, e.prev_kv.as_ref().unwrap(), &mut expected);
        assert_eq!(e.encode_to_vec(), expected);
        assert_eq!(e.encoded_len(), expected.len());
        let put = Event::new(event::EventType::Put, None, None);
        assert!(put.encode_to_vec().is_empty(), "a put with nothing else is the empty message");
        assert_eq!(Event::decode(&expected[..]).unwrap(), e);
    }

    #[test]
    fn a_shared_event_sends_the_same_bytes_and_decodes_to_the_fields() {
        let e = sample();
        let shared = e.shared();
        assert!(shared.is_shared() && shared.kv.is_none());
        assert_eq!(shared.encode_to_vec(), e.encode_to_vec());
        assert_eq!(shared, e);
        // Inside a response, as a watcher receives it.
        let response = |events| WatchResponse { watch_id: 4, events, ..Default::default() };
        let sent = response(vec![shared.clone(), shared]).encode_to_vec();
        assert_eq!(sent, response(vec![e.clone(), e.clone()]).encode_to_vec());
        let got = WatchResponse::decode(&sent[..]).unwrap();
        assert!(got.events.iter().all(|g| !g.is_shared() && *g == e));
        assert_eq!(e.shared().unshared().kv, e.kv, "in process, the fields come back");
        assert_eq!(got.events[0].r#type(), event::EventType::Delete);
        assert_eq!(got.events[0].prev_kv.as_ref().unwrap().value, b"old");
    }

    #[test]
    fn decoding_into_a_shared_event_keeps_what_it_held() {
        let mut shared = sample().shared();
        let mut more = Vec::new();
        encoding::int32::encode(1, &0, &mut more);
        shared.merge(&more[..]).unwrap();
        assert_eq!(shared.kv, sample().kv);
        assert_eq!(shared.r#type(), event::EventType::Put);
    }
}
