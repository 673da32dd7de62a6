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
