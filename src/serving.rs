//! Serving threads: the public listener, served by one thread per CPU.
//!
//! Each thread has its own single-threaded runtime, its own listening socket on the shared
//! port (`SO_REUSEPORT`: the kernel spreads new connections between the sockets) and its own
//! Redis connections. A request is then read, sent to Redis, answered and written by one
//! thread, and nothing on its path wakes another: with one multi-threaded runtime, thread
//! switches and cross-thread wake-ups were a fifth of the gateway's CPU (`perf`, README
//! Performance). Everything else (the admin and internal listeners, the flusher, the health
//! probe) stays on the caller's runtime.
//!
//! Part of the composition root: it runs [`http::serve`] with the handler it is given and
//! never looks at a request itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch};

use crate::http::{self, ConnectionLimits};
use crate::reload::ApiCell;
use crate::store::{Store, StoreConfig};

/// Connections the kernel queues for each socket before they are accepted.
const BACKLOG: u32 = 1024;

/// Binds `count` sockets to `addr` (to one port, chosen by the first when `addr`'s is 0),
/// each listening already, so connections are queued from now on.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = match bound {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(named)?;
        // SO_REUSEADDR as `TcpListener::bind` sets it: a restart may rebind at once.
        socket.set_reuseaddr(true).map_err(named)?;
        socket.set_reuseport(true).map_err(named)?;
        socket.bind(bound).map_err(named)?;
        let listener = socket.listen(BACKLOG).map_err(named)?;
        bound = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// The running serving threads.
pub struct ServingThreads {
    threads: Vec<(oneshot::Receiver<()>, JoinHandle<()>)>,
    /// One per thread, sent when it begins to accept.
    accepting: Vec<oneshot::Receiver<()>>,
}

/// What every serving thread is built from.
pub struct Plan<F> {
    pub store: StoreConfig,
    /// Builds a thread's use cases over its own store (in a cell a reload replaces).
    pub api: F,
    pub limits: ConnectionLimits,
    pub trusted_proxies: Arc<[IpNet]>,
    /// Whether Redis answered at start-up: then each thread waits (bounded) for its own
    /// connections before it accepts, so that its first requests do not wait for them.
    pub redis_answered: bool,
    pub warm_up: Duration,
}

impl ServingThreads {
    /// Starts a thread per listener (from [`bind`]); each serves until `shutdown` is true.
    pub fn start<F>(
        listeners: Vec<std::net::TcpListener>,
        plan: Plan<F>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<ServingThreads>
    where
        F: Fn(Store) -> Arc<ApiCell>,
    {
        let mut threads = Vec::with_capacity(listeners.len());
        let mut accepting = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            // Entered, not run: the socket registers with this thread's reactor, and the
            // store's and upstream client's tasks are spawned on this thread's runtime.
            let (listener, store) = {
                let _entered = runtime.enter();
                let listener = TcpListener::from_std(listener)?;
                let store = Store::connect(&plan.store)
                    .map_err(|e| std::io::Error::other(format!("cannot set up redis: {e}")))?;
                (listener, store)
            };
            let api = (plan.api)(store.clone());
            let (ready, accepts) = oneshot::channel();
            accepting.push(accepts);
            let serve = serve(
                Own {
                    listener,
                    api,
                    store,
                },
                plan.limits,
                plan.trusted_proxies.clone(),
                plan.redis_answered.then_some(plan.warm_up),
                ready,
                shutdown.clone(),
            );
            let (done, finished) = oneshot::channel();
            let thread = std::thread::Builder::new()
                .name(format!("serving-{index}"))
                .spawn(move || run(runtime, serve, done))?;
            threads.push((finished, thread));
        }
        Ok(ServingThreads { threads, accepting })
    }

    /// Waits until every thread accepts (with its Redis connections up, when Redis answered
    /// at start-up), so that a caller told "started" finds the gateway whole.
    pub async fn accepting(&mut self) {
        for accepts in self.accepting.drain(..) {
            let _ = accepts.await;
        }
    }

    /// Waits until every thread has drained its connections and closed its store.
    pub async fn finished(self) {
        for (finished, thread) in self.threads {
            let _ = finished.await;
            // Already past its last statement: joining does not block.
            let _ = thread.join();
        }
    }
}

fn run(runtime: Runtime, serve: impl std::future::Future<Output = ()>, done: oneshot::Sender<()>) {
    runtime.block_on(serve);
    drop(runtime);
    let _ = done.send(());
}

/// What a serving thread has to itself.
struct Own {
    listener: TcpListener,
    api: Arc<ApiCell>,
    store: Store,
}

/// Serves until `shutdown`; first waits up to `connect_within` for the thread's Redis
/// connections, then says it is `ready`.
async fn serve(
    Own {
        listener,
        api,
        store,
    }: Own,
    limits: ConnectionLimits,
    trusted_proxies: Arc<[IpNet]>,
    connect_within: Option<Duration>,
    ready: oneshot::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Some(within) = connect_within {
        if let Err(error) = store.wait_connected(within).await {
            tracing::warn!(%error, "serving thread without its redis connection yet");
        }
    }
    let _ = ready.send(());
    http::serve(
        "public",
        listener,
        move |request, peer| http::api::handle(api.load(), request, peer),
        limits,
        trusted_proxies,
        async move {
            // An error means the sender is gone, which is a shutdown too.
            let _ = shutdown.wait_for(|stop| *stop).await;
        },
    )
    .await;
    store.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_socket_listens_on_the_port_the_first_was_given() {
        let listeners = bind("127.0.0.1:0".parse().expect("an address"), 3).expect("bound");
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("bound").port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|port| *port == ports[0]), "{ports:?}");
        // Listening already: a connection is queued before anything accepts it.
        std::net::TcpStream::connect(("127.0.0.1", ports[0])).expect("queued by the kernel");
    }
}
