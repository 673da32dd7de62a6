//! The snapshot data openraft hands between the state machine and the network: a stored
//! snapshot's file, read where it lies while it is sent, or a file that a snapshot from the
//! leader is written into as its chunks arrive. Never a copy of the snapshot in memory: a
//! member's memory must not grow with the size of the store it sends or receives.
//!
//! openraft 0.9 wants `AsyncRead + AsyncWrite + AsyncSeek`. The files are read and written
//! with std's blocking calls from these poll functions: each call moves one chunk (1 MiB)
//! between the page cache and a buffer, shorter than a wakeup through a blocking pool.

use std::any::Any;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::ReadBuf;

/// A stored file read as a stream that may seek (a snapshot being sent resumes at an offset).
pub trait ReadSeek: Read + Seek + Send {}

impl<T: Read + Seek + Send> ReadSeek for T {}

/// A file being received: written at any offset, then stored by
/// [`crate::engine::Engine::store_received`] or dropped (which removes it).
pub trait ReceivedFile: Read + Write + Seek + Send + 'static {
    /// The engine's own type behind the trait object, for the engine that made it.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Read + Write + Seek + Send + 'static> ReceivedFile for T {
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

enum Body {
    /// What a snapshot build returns: openraft 0.9 keeps only the meta of a snapshot it built
    /// and reads the data through `get_current_snapshot` when it sends one.
    Empty(Cursor<Vec<u8>>),
    /// A stored snapshot's data, being sent.
    Stored(Box<dyn ReadSeek>),
    /// A snapshot being received.
    Received(Box<dyn ReceivedFile>),
}

/// openraft's `SnapshotData` (see the module doc).
pub struct SnapshotData {
    body: Body,
    /// A received file was synced and read through whole ([`SnapshotData::finish_received`]).
    checked: bool,
    /// The result of the seek `start_seek` did, for `poll_complete`.
    seeked: Option<std::io::Result<u64>>,
}

impl SnapshotData {
    fn with(body: Body) -> Self {
        SnapshotData { body, checked: false, seeked: None }
    }

    pub fn empty() -> Self {
        Self::with(Body::Empty(Cursor::new(Vec::new())))
    }

    pub fn stored(data: Box<dyn ReadSeek>) -> Self {
        Self::with(Body::Stored(data))
    }

    /// Data held in memory (tests, tools), read-only.
    pub fn from_bytes(data: Vec<u8>) -> Self {
        Self::stored(Box::new(Cursor::new(data)))
    }

    /// All the bytes, from the start (tests, tools: it is held whole).
    pub fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
        self.seek(SeekFrom::Start(0))?;
        let mut all = Vec::new();
        self.read_to_end(&mut all)?;
        Ok(all)
    }

    pub fn received(file: Box<dyn ReceivedFile>) -> Self {
        Self::with(Body::Received(file))
    }

    /// The file a snapshot was received into, and whether it was checked and synced once all
    /// its chunks had come; `Err` for data of another kind.
    pub fn into_received(self) -> Result<(Box<dyn ReceivedFile>, bool), Self> {
        match self.body {
            Body::Received(f) => Ok((f, self.checked)),
            body => Err(Self::with(body)),
        }
    }

    /// Once the last chunk of a received snapshot is written (the receiver shuts the data down
    /// before handing it to openraft's install): syncs the file and reads it through. Done here,
    /// in the network task, because the install holds up every later Raft command, votes
    /// included (see `KvStore::install`), and both take long for a large snapshot.
    fn finish_received(&mut self) -> std::io::Result<()> {
        if self.checked || !matches!(self.body, Body::Received(_)) {
            return self.flush();
        }
        crate::rt::blocking(|| {
            self.flush()?;
            self.seek(SeekFrom::Start(0))?;
            crate::state_machine::format::check(&mut std::io::BufReader::with_capacity(1 << 20, &mut *self))
        })?;
        self.checked = true;
        Ok(())
    }

    /// Total length in bytes.
    pub fn len(&mut self) -> std::io::Result<u64> {
        let here = self.stream_position()?;
        let end = self.seek(SeekFrom::End(0))?;
        self.seek(SeekFrom::Start(here))?;
        Ok(end)
    }

    /// Whether there are no bytes.
    pub fn is_empty(&mut self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Up to `max` bytes from `offset` (fewer only at the end).
    pub fn read_chunk(&mut self, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        self.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(max);
        self.take(max as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.body {
            Body::Empty(_) => "empty",
            Body::Stored(_) => "stored file",
            Body::Received(_) => "received file",
        };
        write!(f, "SnapshotData({kind})")
    }
}

impl Read for SnapshotData {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.body {
            Body::Empty(c) => c.read(buf),
            Body::Stored(r) => r.read(buf),
            Body::Received(f) => f.read(buf),
        }
    }
}

impl Write for SnapshotData {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.body {
            Body::Received(f) => f.write(buf),
            _ => Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "this snapshot data is read-only")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.body {
            Body::Received(f) => f.flush(),
            _ => Ok(()),
        }
    }
}

impl Seek for SnapshotData {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match &mut self.body {
            Body::Empty(c) => c.seek(pos),
            Body::Stored(r) => r.seek(pos),
            Body::Received(f) => f.seek(pos),
        }
    }
}

impl tokio::io::AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let n = this.read(buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.get_mut().write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().finish_received())
    }
}

impl tokio::io::AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        let this = self.get_mut();
        let done = this.seek(position);
        this.seeked = Some(done);
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        let this = self.get_mut();
        Poll::Ready(match this.seeked.take() {
            Some(done) => done,
            None => this.stream_position(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    /// Data received out of order and at repeated offsets reads back as written, through the
    /// async traits openraft uses, and chunks cut at any offset cover it exactly.
    #[tokio::test]
    async fn received_data_reads_back_at_any_offset() {
        let mut d = SnapshotData::received(Box::new(Cursor::new(Vec::new())));
        AsyncSeekExt::seek(&mut d, SeekFrom::Start(4)).await.unwrap();
        AsyncWriteExt::write_all(&mut d, b"5678").await.unwrap();
        AsyncSeekExt::seek(&mut d, SeekFrom::Start(0)).await.unwrap();
        AsyncWriteExt::write_all(&mut d, b"1234").await.unwrap();
        AsyncWriteExt::flush(&mut d).await.unwrap();
        assert_eq!(d.len().unwrap(), 8);
        let mut all = Vec::new();
        AsyncSeekExt::seek(&mut d, SeekFrom::Start(0)).await.unwrap();
        AsyncReadExt::read_to_end(&mut d, &mut all).await.unwrap();
        assert_eq!(all, b"12345678");
        assert_eq!(d.read_chunk(3, 3).unwrap(), b"456");
        assert_eq!(d.read_chunk(6, 3).unwrap(), b"78");
        // Shut down (its last chunk written), data that is no snapshot is refused.
        let refused = d.shutdown().await.expect_err("not a snapshot");
        assert!(refused.to_string().contains("corrupt snapshot"), "{refused}");
        assert!(matches!(d.into_received(), Ok((_, false))));
    }

    #[test]
    fn stored_data_is_read_only() {
        let mut d = SnapshotData::from_bytes(b"abc".to_vec());
        assert!(Write::write(&mut d, b"x").is_err());
        assert_eq!(d.read_chunk(1, 10).unwrap(), b"bc");
        assert!(SnapshotData::empty().is_empty().unwrap());
    }
}
