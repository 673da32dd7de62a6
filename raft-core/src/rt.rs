//! The openraft async runtime: openraft's own tokio runtime normally, and under `cfg(madsim)` an
//! adapter onto madsim's simulated tasks, clock and seeded randomness (openraft's
//! `TokioRuntime` would use real tokio and break determinism).

#[cfg(not(madsim))]
pub type Runtime = openraft_rt_tokio::TokioRuntime;

#[cfg(madsim)]
pub use sim::SimRuntime as Runtime;

#[cfg(madsim)]
mod sim {
    use std::fmt;
    use std::future::Future;
    use std::ops::{Add, AddAssign, Sub, SubAssign};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use openraft::{AsyncRuntime, OptionalSend};
    use openraft_rt_tokio::{TokioMpsc, TokioMutex, TokioOneshot, TokioWatch};
    use rand010::SeedableRng;

    /// madsim virtualises `std::time::Instant`; openraft wants its own `Instant` trait on it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub struct SimInstant(std::time::Instant);

    impl Add<Duration> for SimInstant {
        type Output = Self;
        fn add(self, d: Duration) -> Self {
            SimInstant(self.0 + d)
        }
    }
    impl AddAssign<Duration> for SimInstant {
        fn add_assign(&mut self, d: Duration) {
            self.0 += d;
        }
    }
    impl Sub<Duration> for SimInstant {
        type Output = Self;
        fn sub(self, d: Duration) -> Self {
            SimInstant(self.0 - d)
        }
    }
    impl Sub<SimInstant> for SimInstant {
        type Output = Duration;
        fn sub(self, other: SimInstant) -> Duration {
            self.0 - other.0
        }
    }
    impl SubAssign<Duration> for SimInstant {
        fn sub_assign(&mut self, d: Duration) {
            self.0 -= d;
        }
    }
    impl openraft::Instant for SimInstant {
        fn now() -> Self {
            SimInstant(madsim::time::Instant::now())
        }
    }

    /// The error of an expired [`SimTimeout`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Elapsed;

    impl fmt::Display for Elapsed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("deadline has elapsed")
        }
    }

    pin_project_lite::pin_project! {
        /// A nameable timeout future (openraft needs the type; madsim's is `impl Future`).
        pub struct SimTimeout<F> {
            #[pin]
            inner: F,
            #[pin]
            deadline: madsim::time::Sleep,
        }
    }

    impl<F: Future> Future for SimTimeout<F> {
        type Output = Result<F::Output, Elapsed>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let me = self.project();
            match me.inner.poll(cx) {
                Poll::Ready(v) => Poll::Ready(Ok(v)),
                Poll::Pending => me.deadline.poll(cx).map(|()| Err(Elapsed)),
            }
        }
    }

    /// openraft's runtime on madsim.
    #[derive(Debug, Default, PartialEq, Eq)]
    pub struct SimRuntime;

    impl AsyncRuntime for SimRuntime {
        type JoinError = madsim::task::JoinError;
        type JoinHandle<T: OptionalSend + 'static> = madsim::task::JoinHandle<T>;
        type Sleep = madsim::time::Sleep;
        type Instant = SimInstant;
        type TimeoutError = Elapsed;
        type Timeout<R, T: Future<Output = R> + OptionalSend> = SimTimeout<T>;
        /// Seeded from madsim's RNG at each call, so a seed replays the same election timeouts.
        type ThreadLocalRng = rand010::rngs::SmallRng;
        // tokio::sync's channels and mutex do not depend on the runtime, so openraft's tokio
        // wrappers serve under madsim too.
        type Mpsc = TokioMpsc;
        type Watch = TokioWatch;
        type Oneshot = TokioOneshot;
        type Mutex<T: OptionalSend + 'static> = TokioMutex<T>;

        fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
        where
            T: Future + OptionalSend + 'static,
            T::Output: OptionalSend + 'static,
        {
            madsim::task::spawn(future)
        }

        fn sleep(d: Duration) -> Self::Sleep {
            madsim::time::sleep(d)
        }

        fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
            madsim::time::sleep_until(deadline.0)
        }

        fn timeout<R, F: Future<Output = R> + OptionalSend>(d: Duration, f: F) -> Self::Timeout<R, F> {
            SimTimeout { inner: f, deadline: madsim::time::sleep(d) }
        }

        fn timeout_at<R, F: Future<Output = R> + OptionalSend>(at: Self::Instant, f: F) -> Self::Timeout<R, F> {
            SimTimeout { inner: f, deadline: madsim::time::sleep_until(at.0) }
        }

        fn is_panic(e: &Self::JoinError) -> bool {
            e.is_panic()
        }

        fn thread_rng() -> Self::ThreadLocalRng {
            use madsim::rand::Rng;
            rand010::rngs::SmallRng::seed_from_u64(madsim::rand::thread_rng().gen())
        }

        fn new(_threads: usize) -> Self {
            SimRuntime
        }

        /// Only openraft's own runtime tests call this; inside a simulation a future is awaited,
        /// never blocked on, so this polls it on the calling thread.
        fn block_on<F, T>(&mut self, future: F) -> T
        where
            F: Future<Output = T>,
        {
            futures::executor::block_on(future)
        }
    }
}

/// Runs `f`, which may block its thread (waiting for the state machine's gate while a snapshot
/// is exported, or exporting one), without stalling the async runtime. On tokio's multi-thread
/// runtime the worker first hands its queued tasks to another thread (`block_in_place`), so
/// Raft's heartbeats and replication keep running; blocking a worker outright stalled every
/// task queued behind it for the whole export, long enough for elections (docs/benchmarks.md).
/// On a current-thread runtime and in the simulation `f` simply runs.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(not(madsim))]
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            return tokio::task::block_in_place(f);
        }
    }
    f()
}
