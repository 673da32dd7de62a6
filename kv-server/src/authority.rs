//! Repairs a URL-shaped HTTP/2 `:authority` on client connections before h2 parses them.
//!
//! etcdctl 3.4 (grpc-go's passthrough resolver) sends the whole endpoint URL, e.g.
//! `http://127.0.0.1:2379`, as `:authority`. etcd accepts it; the h2 crate refuses the stream
//! with PROTOCOL_ERROR and offers no setting to relax the check. [`AuthorityFix`] sits between
//! the accepted socket and hyper: it reads the client's frames until the first header block is
//! complete and decodes it. If that block's authority is acceptable (every other client), the
//! bytes go on unchanged and the connection switches to plain pass-through for good, so the
//! normal path costs one parse of the first few frames. Otherwise every header block of the
//! connection is decoded (HPACK is stateful: the decoder follows the client's dynamic table)
//! and re-encoded without the dynamic table, with `:authority` reduced to its `host:port`.
//! Only client-to-server bytes are touched; writes go straight to the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest payload of a re-encoded frame: the protocol's minimum SETTINGS_MAX_FRAME_SIZE, so
/// it fits whatever the server advertised.
const MAX_FRAME: usize = 16_384;
/// Largest header block buffered for inspection; h2's own limits reject larger ones anyway.
const MAX_BLOCK: usize = 1 << 20;
/// How much is read from the socket at a time while frames are inspected.
const READ_CHUNK: usize = 16 * 1024;

/// A client connection whose HTTP/2 header blocks get a repaired `:authority` when the client
/// sends a URL there; see the module docs.
pub struct AuthorityFix<S> {
    inner: S,
    /// `None` once the connection is pure pass-through (and nothing is left to hand out).
    rewriter: Option<Box<Rewriter>>,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix { inner, rewriter: Some(Box::default()) }
    }

    /// Whether the connection was found to need rewriting (for tests and logs).
    pub fn is_rewriting(&self) -> bool {
        self.rewriter.as_ref().is_some_and(|r| r.mode == Mode::Rewrite)
    }
}

#[cfg(not(madsim))]
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let Some(rw) = this.rewriter.as_mut() else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            if rw.pending_out() > 0 {
                rw.drain_into(buf);
                if rw.finished() {
                    this.rewriter = None;
                }
                return Poll::Ready(Ok(()));
            }
            if rw.finished() {
                this.rewriter = None;
                continue;
            }
            let mut scratch = std::mem::take(&mut rw.scratch);
            scratch.resize(READ_CHUNK, 0);
            let mut rb = ReadBuf::new(&mut scratch);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            let fed = match polled {
                Poll::Ready(Ok(())) if n == 0 => {
                    rw.end_of_input();
                    if rw.pending_out() == 0 {
                        rw.scratch = scratch;
                        return Poll::Ready(Ok(()));
                    }
                    Ok(())
                }
                Poll::Ready(Ok(())) => rw.feed(&scratch[..n]),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => {
                    rw.scratch = scratch;
                    return Poll::Pending;
                }
            };
            rw.scratch = scratch;
            fed?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What the connection has shown so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No complete header block yet.
    Undecided,
    /// The client sends URL authorities: every header block is re-encoded.
    Rewrite,
    /// Bytes go on unchanged from here on.
    Passthrough,
}

/// Where the parser stands in the client's byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Inside the connection preface; the count of its bytes seen.
    Preface(usize),
    /// Gathering a frame header into `head`.
    Head,
    /// Forwarding the rest of a frame payload that is not part of a header block.
    Forward(usize),
    /// Gathering the payload of a HEADERS or CONTINUATION frame; bytes still missing.
    BlockPayload(usize),
}

/// A header block being gathered: the HEADERS frame's stream, flags and priority fields, the
/// fragment so far, and the raw bytes of its frames (forwarded as they were if unchanged).
#[derive(Default)]
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    raw: Vec<u8>,
}

/// The byte-level state of one connection in inspection or rewriting mode.
struct Rewriter {
    mode: Mode,
    stage: Stage,
    head: Vec<u8>,
    /// Frame type and flags of the frame whose payload is being gathered.
    frame: (u8, u8),
    payload: Vec<u8>,
    block: Option<Block>,
    /// Follows the client's HPACK dynamic table.
    decoder: loona_hpack::Decoder<'static>,
    out: Vec<u8>,
    out_pos: usize,
    scratch: Vec<u8>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter {
            mode: Mode::Undecided,
            stage: Stage::Preface(0),
            head: Vec::with_capacity(FRAME_HEADER),
            frame: (0, 0),
            payload: Vec::new(),
            block: None,
            decoder: loona_hpack::Decoder::new(),
            out: Vec::new(),
            out_pos: 0,
            scratch: Vec::new(),
        }
    }
}

/// A failure that makes the connection unusable once rewriting has started.
fn broken(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2 authority rewrite: {what}"))
}

impl Rewriter {
    fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn drain_into(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.pending_out().min(buf.remaining());
        buf.put_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Pass-through with nothing buffered: the wrapper can drop this state.
    fn finished(&self) -> bool {
        self.mode == Mode::Passthrough && self.pending_out() == 0
    }

    /// The client closed its side: whatever was held back goes on as it came, for h2 to judge.
    fn end_of_input(&mut self) {
        self.give_up();
    }

    /// Stops inspecting: forwards held-back bytes unchanged and passes everything on. Only
    /// valid before any block was rewritten (the server's HPACK state would diverge after).
    fn give_up(&mut self) {
        let head = std::mem::take(&mut self.head);
        match self.block.take() {
            Some(b) => {
                self.out.extend_from_slice(&b.raw);
                self.out.extend_from_slice(&head);
            }
            None => self.out.extend_from_slice(&head),
        }
        if matches!(self.stage, Stage::BlockPayload(_)) {
            self.out.extend_from_slice(&self.payload);
        }
        self.payload.clear();
        self.mode = Mode::Passthrough;
    }

    /// A protocol violation: before any rewrite h2 gets the bytes and reports it; after, the
    /// connection cannot continue.
    fn violation(&mut self, what: &str) -> io::Result<()> {
        match self.mode {
            Mode::Rewrite => Err(broken(what)),
            _ => {
                self.give_up();
                Ok(())
            }
        }
    }

    /// Consumes bytes read from the client, appending what h2 should see to `out`.
    fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.mode == Mode::Passthrough {
                self.out.extend_from_slice(data);
                return Ok(());
            }
            match self.stage {
                Stage::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(data.len());
                    let (now, rest) = data.split_at(n);
                    self.out.extend_from_slice(now);
                    data = rest;
                    if now != &PREFACE[seen..seen + n] {
                        // Not HTTP/2 with prior knowledge: nothing for us to do.
                        self.mode = Mode::Passthrough;
                    } else if seen + n == PREFACE.len() {
                        self.stage = Stage::Head;
                    } else {
                        self.stage = Stage::Preface(seen + n);
                    }
                }
                Stage::Head => {
                    let n = (FRAME_HEADER - self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.head.len() == FRAME_HEADER {
                        self.frame_start()?;
                    }
                }
                Stage::Forward(left) => {
                    let n = left.min(data.len());
                    self.out.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.stage = if n == left { Stage::Head } else { Stage::Forward(left - n) };
                }
                Stage::BlockPayload(left) => {
                    let n = left.min(data.len());
                    self.payload.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if n == left {
                        self.frame_end()?;
                    } else {
                        self.stage = Stage::BlockPayload(left - n);
                    }
                }
            }
        }
        Ok(())
    }

    /// A complete frame header is in `head`.
    fn frame_start(&mut self) -> io::Result<()> {
        let h = &self.head;
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        match (&self.block, kind) {
            (None, HEADERS) | (Some(_), CONTINUATION) => {
                let gathered = self.block.as_ref().map_or(0, |b| b.raw.len());
                if gathered + FRAME_HEADER + len > MAX_BLOCK {
                    return self.violation("header block too large to inspect");
                }
                if let Some(b) = &self.block {
                    if b.stream != stream {
                        return self.violation("CONTINUATION on another stream");
                    }
                }
                let block = self.block.get_or_insert_with(|| Block { stream, ..Block::default() });
                block.raw.extend_from_slice(&self.head);
                self.head.clear();
                self.frame = (kind, flags);
                self.payload.clear();
                self.stage = Stage::BlockPayload(len);
                if len == 0 {
                    self.frame_end()?;
                }
                Ok(())
            }
            (Some(_), _) => self.violation("header block interrupted by another frame"),
            (None, _) => {
                self.out.extend_from_slice(&self.head);
                self.head.clear();
                self.stage = if len == 0 { Stage::Head } else { Stage::Forward(len) };
                Ok(())
            }
        }
    }

    /// The payload of a HEADERS or CONTINUATION frame is complete in `payload`.
    fn frame_end(&mut self) -> io::Result<()> {
        let (kind, flags) = self.frame;
        let payload = std::mem::take(&mut self.payload);
        self.stage = Stage::Head;
        let fragment = if kind == HEADERS {
            match split_headers_payload(&payload, flags) {
                Some((priority, fragment)) => {
                    let b = self.block.as_mut().expect("a HEADERS frame opened the block");
                    b.end_stream = flags & END_STREAM != 0;
                    b.priority = priority;
                    fragment
                }
                None => {
                    self.payload = payload;
                    self.stage = Stage::BlockPayload(0);
                    return self.violation("malformed HEADERS padding or priority");
                }
            }
        } else {
            &payload[..]
        };
        let b = self.block.as_mut().expect("a HEADERS frame opened the block");
        b.fragment.extend_from_slice(fragment);
        b.raw.extend_from_slice(&payload);
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("checked above");
            self.block_end(block)?;
        }
        Ok(())
    }

    /// A whole header block is in `block`: forward it unchanged or re-encoded.
    fn block_end(&mut self, block: Block) -> io::Result<()> {
        let mut fields = Vec::new();
        let decoded =
            self.decoder.decode_with_cb(&block.fragment, |n, v| fields.push((n.into_owned(), v.into_owned())));
        if decoded.is_err() {
            // h2 decodes the same bytes and reports the error itself; after a rewrite its
            // table no longer follows the client's, so the connection cannot go on.
            self.block = Some(block);
            return self.violation("undecodable header block");
        }
        if self.mode == Mode::Undecided {
            let bad = fields.iter().any(|(n, v)| n == b":authority" && !valid_authority(v));
            if !bad {
                self.out.extend_from_slice(&block.raw);
                self.mode = Mode::Passthrough;
                return Ok(());
            }
            tracing::debug!("client sends URL-shaped :authority values; rewriting its header blocks");
            self.mode = Mode::Rewrite;
        }
        let encoded = encode_block(fields.into_iter().filter_map(|(n, v)| {
            if n == b":authority" {
                repaired_authority(&v).map(|v| (n, v))
            } else {
                Some((n, v))
            }
        }));
        write_block(&mut self.out, block.stream, block.end_stream, block.priority, &encoded);
        Ok(())
    }
}

/// Splits a HEADERS payload into its priority fields and header block fragment, dropping
/// padding; `None` if the padding or priority fields do not fit.
fn split_headers_payload(payload: &[u8], flags: u8) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&p, r) = rest.split_first()?;
        pad = usize::from(p);
        rest = r;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (p, r) = rest.split_at_checked(5)?;
        priority = Some(p.try_into().ok()?);
        rest = r;
    }
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// Whether h2 accepts `v` as an authority.
fn valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

/// The `host:port` of a URL-shaped authority; `None` drops the field (h2 accepts a request
/// without one).
fn repaired_authority(v: &[u8]) -> Option<Vec<u8>> {
    if valid_authority(v) {
        return Some(v.to_vec());
    }
    let uri = http::Uri::try_from(v).ok()?;
    uri.authority().map(|a| a.as_str().as_bytes().to_vec())
}

/// HPACK-encodes `fields` as literals without indexing (RFC 7541 §6.2.2), so the server's
/// dynamic table stays empty and needs no agreement with anyone.
fn encode_block(fields: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for s in [&name, &value] {
            loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, &mut out).expect("a Vec accepts writes");
            out.extend_from_slice(s);
        }
    }
    out
}

/// Writes `block` as a HEADERS frame followed by as many CONTINUATION frames as it needs.
fn write_block(out: &mut Vec<u8>, stream: u32, end_stream: bool, priority: Option<[u8; 5]>, block: &[u8]) {
    let room = MAX_FRAME - priority.map_or(0, |p| p.len());
    let (first, mut rest) = block.split_at(room.min(block.len()));
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let prio = priority.as_ref().map_or(&[][..], |p| &p[..]);
    frame_header(out, prio.len() + first.len(), HEADERS, flags, stream);
    out.extend_from_slice(prio);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, r) = rest.split_at(MAX_FRAME.min(rest.len()));
        rest = r;
        frame_header(out, chunk.len(), CONTINUATION, if rest.is_empty() { END_HEADERS } else { 0 }, stream);
        out.extend_from_slice(chunk);
    }
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn request(authority: &str, path: &str) -> Fields {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn with_authority(mut fields: Fields, authority: &str) -> Fields {
        for (n, v) in &mut fields {
            if n == b":authority" {
                *v = authority.as_bytes().to_vec();
            }
        }
        fields
    }

    /// A client: HPACK with its dynamic table (loona's encoder indexes every new field, so a
    /// second identical request is all table references).
    struct Client {
        encoder: loona_hpack::Encoder<'static>,
        bytes: Vec<u8>,
    }

    impl Client {
        fn new() -> Client {
            let mut bytes = PREFACE.to_vec();
            frame_header(&mut bytes, 6, 0x4, 0, 0); // SETTINGS with one setting
            bytes.extend_from_slice(&[0, 4, 0, 1, 0, 0]);
            frame_header(&mut bytes, 4, 0x8, 0, 0); // WINDOW_UPDATE
            bytes.extend_from_slice(&1000u32.to_be_bytes());
            Client { encoder: loona_hpack::Encoder::new(), bytes }
        }

        fn block(&mut self, fields: &Fields) -> Vec<u8> {
            self.encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
        }

        /// One HEADERS frame holding the whole block.
        fn headers(&mut self, stream: u32, fields: &Fields) {
            let block = self.block(fields);
            frame_header(&mut self.bytes, block.len(), HEADERS, END_HEADERS, stream);
            self.bytes.extend_from_slice(&block);
        }

        /// HEADERS (padded, with priority) and CONTINUATION frames of at most `piece` bytes.
        fn headers_split(&mut self, stream: u32, fields: &Fields, piece: usize) {
            let block = self.block(fields);
            let mut chunks = block.chunks(piece);
            let first = chunks.next().unwrap_or(&[]);
            let pad = 3;
            let len = 1 + 5 + first.len() + pad;
            let last = block.len() <= piece;
            let flags = END_STREAM | PADDED | PRIORITY | if last { END_HEADERS } else { 0 };
            frame_header(&mut self.bytes, len, HEADERS, flags, stream);
            self.bytes.push(pad as u8);
            self.bytes.extend_from_slice(&[0, 0, 0, 0, 15]);
            self.bytes.extend_from_slice(first);
            self.bytes.extend_from_slice(&[0; 3]);
            let rest: Vec<&[u8]> = chunks.collect();
            for (i, c) in rest.iter().enumerate() {
                let flags = if i + 1 == rest.len() { END_HEADERS } else { 0 };
                frame_header(&mut self.bytes, c.len(), CONTINUATION, flags, stream);
                self.bytes.extend_from_slice(c);
            }
        }

        fn data(&mut self, stream: u32, payload: &[u8]) {
            frame_header(&mut self.bytes, payload.len(), 0x0, 0, stream);
            self.bytes.extend_from_slice(payload);
        }
    }

    /// Feeds `input` in pieces of `step` bytes and collects what h2 would read.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Mode) {
        let mut rw = Rewriter::default();
        for piece in input.chunks(step) {
            rw.feed(piece).expect("feed");
        }
        let mode = rw.mode;
        rw.end_of_input();
        (rw.out[rw.out_pos..].to_vec(), mode)
    }

    /// A frame as the server sees it.
    #[derive(Debug)]
    struct Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    fn frames(mut bytes: &[u8]) -> Vec<Frame> {
        assert!(bytes.starts_with(PREFACE), "the preface goes first");
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            assert!(len <= MAX_FRAME, "frame of {len} bytes");
            out.push(Frame { kind: bytes[3], flags: bytes[4], stream, payload: bytes[9..9 + len].to_vec() });
            bytes = &bytes[9 + len..];
        }
        out
    }

    /// Decodes every header block of `frames`, each with a fresh decoder: this only succeeds
    /// if no block refers to the dynamic table. Returns (stream, END_STREAM, priority, fields).
    fn blocks_without_table(frames: &[Frame]) -> Vec<(u32, bool, Option<[u8; 5]>, Fields)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < frames.len() {
            let f = &frames[i];
            i += 1;
            if f.kind != HEADERS {
                continue;
            }
            let (priority, fragment) = split_headers_payload(&f.payload, f.flags).expect("well-formed");
            let mut block = fragment.to_vec();
            let mut flags = f.flags;
            while flags & END_HEADERS == 0 {
                let c = &frames[i];
                assert_eq!((c.kind, c.stream), (CONTINUATION, f.stream));
                block.extend_from_slice(&c.payload);
                flags = c.flags;
                i += 1;
            }
            let fields = loona_hpack::Decoder::new().decode(&block).expect("decodes without the dynamic table");
            out.push((f.stream, f.flags & END_STREAM != 0, priority, fields));
        }
        out
    }

    #[test]
    fn a_valid_authority_switches_to_pass_through_byte_for_byte() {
        let mut c = Client::new();
        c.headers(1, &request("127.0.0.1:2379", "/etcdserverpb.KV/Range"));
        c.data(1, b"\0\0\0\0\x02\x0a\x00");
        c.headers(3, &request("127.0.0.1:2379", "/etcdserverpb.KV/Put"));
        for step in [1, 7, 4096] {
            let (out, mode) = run(&c.bytes, step);
            assert_eq!(out, c.bytes, "step {step}");
            assert_eq!(mode, Mode::Passthrough);
        }
    }

    #[test]
    fn a_request_without_authority_is_left_alone() {
        let mut c = Client::new();
        let fields: Fields = request("x", "/p").into_iter().filter(|(n, _)| n != b":authority").collect();
        c.headers(1, &fields);
        let (out, mode) = run(&c.bytes, 5);
        assert_eq!((out, mode), (c.bytes.clone(), Mode::Passthrough));
    }

    #[test]
    fn url_authorities_are_rewritten_in_every_block_across_the_dynamic_table() {
        let mut c = Client::new();
        let first = request("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/Status");
        c.headers(1, &first);
        c.data(1, b"\0\0\0\0\0");
        // Identical fields again: the client now sends only dynamic-table references.
        c.headers(3, &first);
        let second = request("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/HashKV");
        c.headers(5, &second);
        for step in [1, 3, 9, 100, 1 << 20] {
            let (out, mode) = run(&c.bytes, step);
            assert_eq!(mode, Mode::Rewrite);
            let fs = frames(&out);
            let data: Vec<_> = fs.iter().filter(|f| f.kind == 0).collect();
            assert_eq!((data.len(), data[0].payload.as_slice()), (1, &b"\0\0\0\0\0"[..]), "DATA passes unchanged");
            let blocks = blocks_without_table(&fs);
            let expect = |f: &Fields| with_authority(f.clone(), "127.0.0.1:2379");
            let got: Vec<(u32, Fields)> = blocks.into_iter().map(|(s, _, _, f)| (s, f)).collect();
            assert_eq!(got, vec![(1, expect(&first)), (3, expect(&first)), (5, expect(&second))], "step {step}");
        }
    }

    #[test]
    fn continuation_padding_and_priority_are_read_and_large_blocks_are_split() {
        let mut c = Client::new();
        let small = request("http://h:1", "/a");
        c.headers_split(1, &small, 7);
        // A block larger than one frame: the output needs CONTINUATION frames too.
        let mut big = request("http://h:1", "/b");
        big.push((b"x-big".to_vec(), vec![b'v'; 3 * MAX_FRAME]));
        c.headers_split(3, &big, 5000);
        c.headers(5, &small);
        let (out, mode) = run(&c.bytes, 11);
        assert_eq!(mode, Mode::Rewrite);
        let fs = frames(&out);
        assert!(fs.iter().filter(|f| f.kind == CONTINUATION).count() >= 3, "the big block spans frames");
        let blocks = blocks_without_table(&fs);
        let fix = |f: &Fields| with_authority(f.clone(), "h:1");
        let prio = Some([0, 0, 0, 0, 15]);
        assert_eq!(blocks[0], (1, true, prio, fix(&small)));
        assert_eq!(blocks[1], (3, true, prio, fix(&big)));
        assert_eq!(blocks[2], (5, false, None, fix(&small)));
    }

    #[test]
    fn the_first_block_decides_even_when_it_is_split() {
        let mut c = Client::new();
        c.headers_split(1, &request("127.0.0.1:1", "/a"), 4);
        c.headers(3, &request("127.0.0.1:1", "/b"));
        let (out, mode) = run(&c.bytes, 2);
        assert_eq!((out, mode), (c.bytes.clone(), Mode::Passthrough));
    }

    #[test]
    fn garbage_and_broken_frames_reach_h2_unchanged() {
        // Not HTTP/2 at all.
        let junk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(run(&junk, 3), (junk.clone(), Mode::Passthrough));
        // A header block interrupted by a DATA frame, before anything was rewritten.
        let mut c = Client::new();
        let block = c.block(&request("http://h:1", "/a"));
        frame_header(&mut c.bytes, 4, HEADERS, 0, 1);
        c.bytes.extend_from_slice(&block[..4]);
        c.data(1, b"zz");
        assert_eq!(run(&c.bytes, 5), (c.bytes.clone(), Mode::Passthrough));
        // A block that is not valid HPACK.
        let mut c = Client::new();
        frame_header(&mut c.bytes, 2, HEADERS, END_HEADERS, 1);
        c.bytes.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(run(&c.bytes, 1), (c.bytes.clone(), Mode::Passthrough));
        // A connection that ends inside a frame header.
        let mut c = Client::new();
        c.bytes.extend_from_slice(&[0, 0]);
        assert_eq!(run(&c.bytes, 1), (c.bytes.clone(), Mode::Undecided), "held back until the end, then forwarded");
    }

    #[test]
    fn authority_repair() {
        assert_eq!(repaired_authority(b"http://127.0.0.1:2379").as_deref(), Some(&b"127.0.0.1:2379"[..]));
        assert_eq!(repaired_authority(b"https://[::1]:2379/").as_deref(), Some(&b"[::1]:2379"[..]));
        assert_eq!(repaired_authority(b"localhost:2379").as_deref(), Some(&b"localhost:2379"[..]));
        assert_eq!(repaired_authority(b"not a url"), None, "dropped rather than refused");
    }

    #[tokio::test]
    async fn the_wrapper_hands_out_rewritten_bytes_then_steps_aside() {
        let mut c = Client::new();
        c.headers(1, &request("127.0.0.1:2379", "/a"));
        let (mut tx, rx) = tokio::io::duplex(64);
        let input = c.bytes.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&input).await.unwrap();
            tx.write_all(b"after").await.unwrap();
        });
        let mut fix = AuthorityFix::new(rx);
        let mut got = vec![0; c.bytes.len()];
        fix.read_exact(&mut got).await.unwrap();
        assert_eq!(got, c.bytes);
        assert!(fix.rewriter.is_none() || fix.rewriter.as_ref().unwrap().mode == Mode::Passthrough);
        let mut rest = Vec::new();
        writer.await.unwrap();
        fix.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"after");
        assert!(fix.rewriter.is_none(), "pass-through drops the inspection state");
    }

    #[tokio::test]
    async fn the_wrapper_rewrites_through_small_reads() {
        let mut c = Client::new();
        c.headers(1, &request("http://127.0.0.1:2379", "/a"));
        let (mut tx, rx) = tokio::io::duplex(16);
        let input = c.bytes.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&input).await.unwrap();
        });
        let mut fix = AuthorityFix::new(rx);
        let mut out = Vec::new();
        let mut buf = [0u8; 5];
        loop {
            let n = fix.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let blocks = blocks_without_table(&frames(&out));
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].3, with_authority(request("x", "/a"), "127.0.0.1:2379"));
    }
}
