//! Keeps a member that is receiving or installing a snapshot from starting elections.
//!
//! openraft 0.9.25 sends a follower no heartbeat while a snapshot is in flight to it (the
//! leader's heartbeat goes only to members with nothing in flight), and a snapshot chunk does
//! not reset the receiver's election timer (`Raft::install_snapshot` only reads the vote). So a
//! transfer longer than the election timeout made the receiver campaign at a higher term; its
//! next reply to the leader carried that term and the leader stepped down, while the receiver,
//! whose log is behind, could not win: an election per attempt, and the transfer started over.
//!
//! Here, every snapshot RPC the member serves holds elections off (openraft's runtime switch),
//! and they stay off after the last one until the leader is heard again: its next AppendEntries
//! (sent once the snapshot is installed) resets the timer, so turning elections on does not
//! meet a timer that ran out during the transfer. If the leader is not heard for a while after
//! a snapshot RPC (longer than the leader waits for a chunk, with room for an election timeout:
//! it died during the transfer), elections are turned on anyway.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::engine::Engine;
use crate::typ::Raft;

struct State {
    /// Snapshot RPCs being served now.
    in_flight: usize,
    /// When the last one ended.
    last_end: Instant,
    /// When an AppendEntries of an established leader was last accepted while paused.
    last_heard: Instant,
    /// Whether elections are off.
    paused: bool,
    /// When they were turned off.
    paused_at: Instant,
}

/// The member's switch (one per node); see the module doc.
pub struct CatchUp<E: Engine> {
    raft: Raft<E>,
    /// How long after the last snapshot RPC without hearing the leader before elections are
    /// on again.
    quiet: Duration,
    state: Mutex<State>,
    #[cfg(feature = "planted-bugs")]
    elect_anyway: std::sync::atomic::AtomicBool,
}

/// Held while one snapshot RPC is served.
pub struct Receiving<E: Engine> {
    catch_up: Arc<CatchUp<E>>,
}

impl<E: Engine> CatchUp<E> {
    /// The switch of `raft`: elections are on again at the leader's next AppendEntries after the
    /// last snapshot RPC, or `quiet` after it without one. Runs a task that checks every
    /// `every`, which stops when the switch is dropped.
    pub fn start(raft: Raft<E>, quiet: Duration, every: Duration) -> Arc<CatchUp<E>> {
        let now = Instant::now();
        let state = State { in_flight: 0, last_end: now, last_heard: now, paused: false, paused_at: now };
        let catch_up = Arc::new(CatchUp {
            raft,
            quiet,
            state: Mutex::new(state),
            #[cfg(feature = "planted-bugs")]
            elect_anyway: Default::default(),
        });
        tokio::spawn(resume_when_quiet(Arc::downgrade(&catch_up), every));
        catch_up
    }

    /// Runs with the planted bug `elect_while_catching_up` if it is set.
    #[cfg(feature = "planted-bugs")]
    pub fn plant(&self, bugs: crate::planted::PlantedBugs) {
        self.elect_anyway.store(bugs.elect_while_catching_up, std::sync::atomic::Ordering::Relaxed);
    }

    /// Marks a snapshot RPC being served: elections are off until it ends and the quiet period
    /// after it has passed.
    pub fn receiving(self: &Arc<Self>) -> Receiving<E> {
        let mut st = self.state.lock();
        st.in_flight += 1;
        #[cfg(feature = "planted-bugs")]
        if self.elect_anyway.load(std::sync::atomic::Ordering::Relaxed) {
            return Receiving { catch_up: self.clone() };
        }
        if !st.paused {
            st.paused = true;
            st.paused_at = Instant::now();
            self.raft.runtime_config().elect(false);
            tracing::info!(
                "receiving a snapshot from the leader: this member starts no election until it is installed"
            );
        }
        Receiving { catch_up: self.clone() }
    }

    /// Whether elections are held off now.
    pub fn paused(&self) -> bool {
        self.state.lock().paused
    }

    /// Notes an AppendEntries accepted from an established leader: it reset the election
    /// timer, so elections may be on again if no snapshot RPC runs.
    pub fn heard_leader(&self) {
        let mut st = self.state.lock();
        // Called for every AppendEntries: only a paused switch needs the time.
        if st.paused {
            st.last_heard = Instant::now();
            self.resume_if_over(&mut st);
        }
    }

    fn resume_if_over(&self, st: &mut State) {
        let over = st.in_flight == 0 && (st.last_heard > st.last_end || st.last_end.elapsed() >= self.quiet);
        if st.paused && over {
            st.paused = false;
            self.raft.runtime_config().elect(true);
            let how = if st.last_heard > st.last_end { "the leader is heard again" } else { "the leader went quiet" };
            tracing::info!(
                "snapshot transfer over ({how}): elections allowed again after {:?} without",
                st.paused_at.elapsed()
            );
        }
    }
}

impl<E: Engine> Drop for Receiving<E> {
    fn drop(&mut self) {
        let mut st = self.catch_up.state.lock();
        st.in_flight -= 1;
        st.last_end = Instant::now();
    }
}

async fn resume_when_quiet<E: Engine>(catch_up: Weak<CatchUp<E>>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match catch_up.upgrade() {
            Some(c) => {
                let mut st = c.state.lock();
                c.resume_if_over(&mut st);
            }
            None => return,
        }
    }
}
