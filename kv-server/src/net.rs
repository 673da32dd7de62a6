//! Binding and serving the client port. The one place where real and simulated networking
//! differ: madsim-tonic's simulated server has only `serve`/`serve_with_shutdown` on an address.

use std::future::Future;
use std::net::SocketAddr;

use tonic::transport::server::Router;

/// What every listener serves: the generated services behind [`crate::error::EtcdTexts`].
#[cfg(not(madsim))]
pub type Routes = Router<tower_layer::Stack<crate::error::EtcdTexts, tower_layer::Identity>>;
/// What every listener serves. Simulated messages are never encoded, so no layer rewrites
/// encoding failures.
#[cfg(madsim)]
pub type Routes = Router;

/// A gRPC server builder with raftkv's layers; add services to it and serve the result.
#[cfg(not(madsim))]
pub fn server() -> tonic::transport::Server<tower_layer::Stack<crate::error::EtcdTexts, tower_layer::Identity>> {
    tonic::transport::Server::builder().layer(crate::error::EtcdTexts)
}

/// A gRPC server builder with raftkv's layers; add services to it and serve the result.
#[cfg(madsim)]
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
}

/// `n` loopback ports that nothing listens on now, for a cluster started on one machine whose
/// peer URLs must be known before any member binds (tests, `kvctl` examples, local setups).
///
/// The ports come from below the kernel's ephemeral range: a port the OS hands out for port 0
/// lies inside it, where a member dialing a peer that is not up yet can take it as the local end
/// of its connection between this check and the peer's bind ("Address already in use"). Each
/// process starts probing at a different place, so two processes doing this at once rarely meet.
#[cfg(not(madsim))]
pub fn unused_loopback_ports(n: usize) -> std::io::Result<Vec<u16>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    /// Probes continue where the last call stopped, so one process never returns a port twice
    /// before the whole range is used.
    static PROBED: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = u32::from(ephemeral_start.saturating_sub(LOWEST));
    let start = std::process::id().wrapping_mul(7_919) % span.max(1);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        let port = LOWEST + ((start + PROBED.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
            if ports.len() == n {
                return Ok(ports);
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("fewer than {n} unused loopback ports between {LOWEST} and the ephemeral range at {ephemeral_start}"),
    ))
}

/// Bound client listeners, ready to serve.
pub struct Listeners {
    #[cfg(not(madsim))]
    inner: Vec<tokio::net::TcpListener>,
    #[cfg(madsim)]
    inner: Vec<SocketAddr>,
}

impl Listeners {
    /// Binds every `host:port` (port 0 picks a free port).
    pub async fn bind(addrs: &[String]) -> std::io::Result<Listeners> {
        let mut inner = Vec::new();
        for a in addrs {
            #[cfg(not(madsim))]
            inner.push(tokio::net::TcpListener::bind(a).await?);
            #[cfg(madsim)]
            inner.push(a.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?);
        }
        Ok(Listeners { inner })
    }

    /// The addresses actually bound.
    pub fn local_addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        #[cfg(not(madsim))]
        return self.inner.iter().map(|l| l.local_addr()).collect();
        #[cfg(madsim)]
        return Ok(self.inner.clone());
    }

    /// Serves `router` on every listener until `shutdown` resolves, then drains in-flight calls.
    pub async fn serve(
        self,
        router: Routes,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        #[cfg(not(madsim))]
        {
            use futures::StreamExt;
            let incoming =
                futures::stream::select_all(self.inner.into_iter().map(tokio_stream::wrappers::TcpListenerStream::new))
                    // Small answers must leave at once: with Nagle's algorithm on, each waits
                    // for the client's delayed ACK (40 ms on Linux), which capped a member's
                    // reads far below what it serves otherwise (docs/benchmarks.md).
                    .map(|conn| conn.and_then(|s| s.set_nodelay(true).map(|()| s)))
                    // etcdctl 3.4 sends a URL as :authority, which h2 refuses; this repairs it
                    // and steps aside after the first header block of every other client.
                    .map(|conn| conn.map(crate::authority::AuthorityFix::new));
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
        #[cfg(madsim)]
        {
            let addr = self.inner[0];
            router.serve_with_shutdown(addr, shutdown).await
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::unused_loopback_ports;

    #[test]
    fn unused_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let ephemeral_start: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        let first = unused_loopback_ports(3).unwrap();
        // A later call hands out other ports, even while the first ones are still free.
        let second = unused_loopback_ports(3).unwrap();
        let mut all = [first.clone(), second.clone()].concat();
        assert!(all.iter().all(|p| (10_000..ephemeral_start).contains(p)), "{all:?} vs {ephemeral_start}");
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6, "{first:?} then {second:?}");
        for p in second {
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
