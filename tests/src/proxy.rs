//! A TCP proxy that injects network faults between a client and a real server: blackholes
//! (both ways or one way), latency, refused and reset connections, replies cut mid-way, sliced
//! into small pieces, or slowed to a bandwidth.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic. Switch it at run time with [`FaultProxy::set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fault {
    /// Forward everything untouched.
    #[default]
    Pass,
    /// Forward nothing and answer nothing, in either direction: a hung server or a dead network
    /// path. Bytes in flight are held, not dropped, and delivered in order once the fault ends
    /// (as TCP would after a partition heals). New connections are held open without reaching
    /// the server.
    Blackhole,
    /// Forward every chunk after this delay.
    Latency(Duration),
    /// Reset every new connection as soon as it is accepted (existing ones keep working).
    Refuse,
    /// A one-way partition: requests reach the server (and run there), replies are held, in
    /// order, until the fault ends. The worst case for a client: its writes apply while it
    /// sees only timeouts.
    HoldReplies,
    /// The other way: requests are held until the fault ends; replies already on their way
    /// still arrive.
    HoldRequests,
    /// Each reply is cut: the first half of the bytes the server sent is delivered, then the
    /// connection is reset in both directions (a reply lost mid-way, as toxiproxy's
    /// `limit_data` does).
    CutReplies,
    /// Replies are delivered in pieces of `bytes` bytes, `delay` apart (toxiproxy's `slicer`):
    /// a client must reassemble replies split anywhere. A zero delay yields to other tasks
    /// between pieces instead (a timer pause is at least a millisecond).
    Slice {
        /// Bytes per piece (at least 1).
        bytes: usize,
        /// Pause between pieces.
        delay: Duration,
    },
    /// Replies flow at most this many bytes a second (toxiproxy's `bandwidth`): a slow link.
    Bandwidth(u64),
}

/// Which way a pump copies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

/// How a pump ended.
enum Ended {
    /// Its source closed.
    Closed,
    /// The fault asked for both sides to be reset.
    Reset,
}

struct Shared {
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    resets: watch::Sender<u64>,
    accepted: AtomicU64,
    active: AtomicUsize,
    reply_writes: AtomicU64,
}

/// A fault-injecting proxy on a free loopback port in front of `upstream`.
///
/// It runs on the Tokio runtime that started it and stops, closing every connection, when
/// dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    // Dropping this ends every task of the proxy.
    _shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("fault", &self.fault())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts forwarding from a free loopback port to `upstream`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            fault: watch::Sender::new(Fault::Pass),
            resets: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            reply_writes: AtomicU64::new(0),
        });
        let (shutdown, shutdown_rx) = watch::channel(());
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), shutdown_rx));
        Self {
            addr,
            shared,
            _shutdown: shutdown,
        }
    }

    /// The address clients connect to.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:<proxy port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Switches what the proxy does; applies to traffic from now on, on every connection.
    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    /// The fault in force.
    #[must_use]
    pub fn fault(&self) -> Fault {
        *self.shared.fault.borrow()
    }

    /// Resets (TCP RST) every open connection, both to the client and to the server.
    pub fn reset_all(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Connections open through the proxy now.
    #[must_use]
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Writes made to clients since start (a sliced reply takes one per piece).
    #[must_use]
    pub fn reply_writes(&self) -> u64 {
        self.shared.reply_writes.load(Ordering::SeqCst)
    }

    /// Connections accepted since start.
    #[must_use]
    pub fn accepted_connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                if *shared.fault.borrow() == Fault::Refuse {
                    reset(&client);
                    continue;
                }
                let shared = Arc::clone(&shared);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    shared.active.fetch_add(1, Ordering::SeqCst);
                    serve(client, &shared, shutdown).await;
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    }
}

/// Closes with RST rather than FIN, like a crashed peer or a middlebox dropping state.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn serve(mut client: TcpStream, shared: &Shared, mut shutdown: watch::Receiver<()>) {
    let mut resets = shared.resets.subscribe();
    let mut fault = shared.fault.subscribe();

    // While blackholed, a new connection is held and reaches nothing; what the client sends
    // waits in the socket, as it would in a network that heals (nothing is dropped: a dropped
    // request would shift every later reply onto the wrong request, which no network does).
    while *fault.borrow_and_update() == Fault::Blackhole {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = resets.changed() => { reset(&client); return; }
            changed = fault.changed() => if changed.is_err() { return },
        }
    }
    let Ok(mut upstream) = TcpStream::connect(shared.upstream).await else {
        // The server is down: the client sees its connection reset, as it would directly.
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let reset_both = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        tokio::select! {
            _ = shutdown.changed() => true,
            _ = resets.changed() => true,
            ended = pump(cr, uw, shared, Direction::ToServer) => {
                matches!(ended, Ended::Reset)
            }
            ended = pump(ur, cw, shared, Direction::ToClient) => {
                matches!(ended, Ended::Reset)
            }
        }
    };
    if reset_both {
        reset(&client);
        reset(&upstream);
    }
}

/// Copies one direction, applying the fault in force to each chunk. A hold (blackhole, or a
/// one-way hold in this direction) keeps the chunk (and, by not reading, everything behind it)
/// until it ends: bytes are late, never lost or reordered, as over TCP. Only `CutReplies` loses
/// bytes, and it resets the connection when it does.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    shared: &Shared,
    direction: Direction,
) -> Ended {
    let mut fault = shared.fault.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return Ended::Closed;
            }
            Ok(n) => n,
        };
        let replies = direction == Direction::ToClient;
        let mut piece = n;
        let mut pause = Duration::ZERO;
        loop {
            let current = *fault.borrow_and_update();
            match current {
                Fault::Blackhole => {}
                Fault::HoldReplies if replies => {}
                Fault::HoldRequests if !replies => {}
                Fault::Latency(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Fault::CutReplies if replies => {
                    let _ = to.write_all(&buf[..n / 2]).await;
                    return Ended::Reset;
                }
                Fault::Slice { bytes, delay } if replies => {
                    piece = bytes.max(1);
                    pause = delay;
                    break;
                }
                Fault::Bandwidth(rate) if replies => {
                    // A hundredth of a second's worth, every 10 ms.
                    piece = usize::try_from(rate / 100).unwrap_or(usize::MAX).max(1);
                    pause = Duration::from_millis(10);
                    break;
                }
                _ => break,
            }
            if fault.changed().await.is_err() {
                return Ended::Closed;
            }
        }
        for (i, chunk) in buf[..n].chunks(piece).enumerate() {
            if i > 0 {
                if pause.is_zero() {
                    // Let the reader run between pieces, so it sees them apart.
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(pause).await;
                }
            }
            if to.write_all(chunk).await.is_err() {
                return Ended::Closed;
            }
            if replies {
                shared.reply_writes.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}
