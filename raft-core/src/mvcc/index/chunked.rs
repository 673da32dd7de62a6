//! The chunked scan both tables of the key index serve their scans with: pairs copied out a
//! chunk at a time, each under the table's lock, so no lock is held between `next` calls.

use std::ops::Bound;

use crate::engine::{owned_bound, valid, Pair, Result};

/// Most pairs a scan copies out per lock.
pub(super) const SCAN_CHUNK: usize = 64;

/// A scan over an in-memory table that copies pairs out a chunk at a time, each under the
/// table's lock, and resumes after the last pair it returned: no lock is held between `next`
/// calls, and writes made meanwhile are seen as an ordered map would show them. `fill` copies
/// at most `n` pairs within the bounds, in key order or in reverse. Chunks start at
/// `first_chunk` pairs and grow to [`SCAN_CHUNK`].
pub(super) struct ChunkedScan<F> {
    fill: F,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    /// The next pairs, in reverse of the order they are returned in.
    chunk: Vec<Pair>,
    /// Pairs the next refill copies.
    chunk_len: usize,
    done: bool,
}

impl<F> ChunkedScan<F>
where
    F: FnMut(Bound<&[u8]>, Bound<&[u8]>, bool, usize) -> Vec<Pair>,
{
    pub(super) fn new(fill: F, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool, first_chunk: usize) -> Self {
        ChunkedScan {
            fill,
            lower: owned_bound(lower),
            upper: owned_bound(upper),
            reverse,
            chunk: Vec::new(),
            chunk_len: first_chunk.clamp(1, SCAN_CHUNK),
            done: false,
        }
    }

    fn refill(&mut self) {
        if !valid(&self.lower, &self.upper) {
            self.done = true;
            return;
        }
        let (lower, upper) = (self.lower.as_ref().map(Vec::as_slice), self.upper.as_ref().map(Vec::as_slice));
        self.chunk = (self.fill)(lower, upper, self.reverse, self.chunk_len);
        if self.chunk.len() < self.chunk_len {
            self.done = true;
        }
        self.chunk_len = (self.chunk_len * 4).min(SCAN_CHUNK);
        if let Some((last, _)) = self.chunk.last() {
            if self.reverse {
                self.upper = Bound::Excluded(last.clone());
            } else {
                self.lower = Bound::Excluded(last.clone());
            }
        }
        self.chunk.reverse();
    }
}

impl<F> Iterator for ChunkedScan<F>
where
    F: FnMut(Bound<&[u8]>, Bound<&[u8]>, bool, usize) -> Vec<Pair>,
{
    type Item = Result<Pair>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.chunk.is_empty() && !self.done {
            self.refill();
        }
        self.chunk.pop().map(Ok)
    }
}
