//! A fault-injecting TCP proxy for tests: the service reaches PostgreSQL or RabbitMQ
//! through it, and the test cuts every connection, refuses new ones, adds latency, or
//! black-holes the connections it already has.
//! (No maintained Rust crate does this in-process; toxiproxy needs its own server.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

struct Faults {
    upstream: SocketAddr,
    refusing: AtomicBool,
    stalled: AtomicBool,
    latency_ms: AtomicU64,
    /// Number given to the next accepted connection.
    next_connection: AtomicU64,
    /// Connections numbered below this are black-holed.
    black_holed_below: AtomicU64,
    connections: Mutex<Vec<AbortHandle>>,
}

impl Faults {
    fn black_holed(&self, connection: u64) -> bool {
        connection < self.black_holed_below.load(Ordering::SeqCst)
    }
}

/// A running proxy; dropping it closes everything.
pub struct FaultProxy {
    address: SocketAddr,
    faults: Arc<Faults>,
    acceptor: AbortHandle,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream.parse().expect("upstream address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let faults = Arc::new(Faults {
            upstream,
            refusing: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            latency_ms: AtomicU64::new(0),
            next_connection: AtomicU64::new(0),
            black_holed_below: AtomicU64::new(0),
            connections: Mutex::new(Vec::new()),
        });
        let acceptor = tokio::spawn(accept(listener, faults.clone())).abort_handle();
        Self {
            address,
            faults,
            acceptor,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Closes every open connection at once (both directions).
    pub fn cut_all(&self) {
        let connections = std::mem::take(&mut *self.faults.connections.lock().expect("lock"));
        for connection in connections {
            connection.abort();
        }
    }

    /// While on, new connections are closed as soon as they are accepted.
    pub fn refuse_new(&self, on: bool) {
        self.faults.refusing.store(on, Ordering::SeqCst);
    }

    /// The dependency goes away: existing connections cut, new ones refused.
    pub fn down(&self) {
        self.refuse_new(true);
        self.cut_all();
    }

    /// The dependency is back.
    pub fn up(&self) {
        self.refuse_new(false);
    }

    /// While on, the dependency hangs like a black-holed network: connections (old and
    /// new) stay open but nothing is forwarded; what was held moves on when it is off.
    pub fn stall(&self, on: bool) {
        self.faults.stalled.store(on, Ordering::SeqCst);
    }

    /// Like a primary failover or a dead NAT entry: the connections open now stop
    /// forwarding in both directions for good, and are never closed (nothing, not even a
    /// close by the server, reaches the other side), while new connections work. Note
    /// that the proxy's own sockets still acknowledge at the TCP level, so TCP keepalives
    /// cannot notice it; only timeouts above TCP can.
    pub fn black_hole_existing(&self) {
        let next = self.faults.next_connection.load(Ordering::SeqCst);
        self.faults.black_holed_below.store(next, Ordering::SeqCst);
    }

    /// Delays every chunk forwarded in either direction.
    pub fn set_latency(&self, latency: Duration) {
        self.faults
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut_all();
    }
}

async fn accept(listener: TcpListener, faults: Arc<Faults>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if faults.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let number = faults.next_connection.fetch_add(1, Ordering::SeqCst);
        let task = tokio::spawn(forward(client, number, faults.clone()));
        let mut connections = faults.connections.lock().expect("lock");
        connections.retain(|c| !c.is_finished());
        connections.push(task.abort_handle());
    }
}

async fn forward(client: TcpStream, number: u64, faults: Arc<Faults>) {
    let Ok(server) = TcpStream::connect(faults.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pump(client_read, server_write, number, &faults) => {}
        _ = pump(server_read, client_write, number, &faults) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    number: u64,
    faults: &Faults,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = from.read(&mut buffer).await;
        if faults.black_holed(number) {
            // Swallow this and everything after it, an end of stream included; the
            // sockets stay open until the proxy is dropped.
            std::future::pending::<()>().await;
        }
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while faults.stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let latency = faults.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
