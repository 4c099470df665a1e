//! A test-private Tansu broker behind a TCP proxy the test can cut off and
//! reconnect. Only the proxy goes down: the broker keeps its topics, offsets
//! and groups, as a real broker behind a network outage would. The shared
//! broker is never touched.
//!
//! Kafka clients reconnect to the address the broker advertises, so Tansu
//! listens on one port and advertises the proxy's.
//!
//! The binary comes from `SHOPMESH_TANSU_BIN` (exported by `scripts/test.sh`)
//! or `.local/tansu/tansu`; without one, tests fail rather than skip.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use crate::process::{Tethered, free_port, spawn_tansu};

pub struct PrivateBroker {
    /// Where clients connect (the proxy); the broker advertises it.
    pub addr: SocketAddr,
    proxy: Arc<Proxy>,
    accept: JoinHandle<()>,
    /// Tansu itself, stopped when this drops.
    _tansu: Tethered,
}

struct Proxy {
    upstream: SocketAddr,
    state: Mutex<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    paused: bool,
    connections: Vec<AbortHandle>,
}

fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SHOPMESH_TANSU_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "SHOPMESH_TANSU_BIN={} does not exist", bin.display());
        return bin;
    }
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.local/tansu/tansu");
    assert!(
        bin.is_file(),
        "no Tansu binary for a private broker: set SHOPMESH_TANSU_BIN, or run scripts/test.sh (it installs {})",
        bin.display()
    );
    bin
}

impl PrivateBroker {
    /// Starts Tansu (in-memory storage) and the proxy; returns once a
    /// metadata request through the proxy succeeds.
    pub async fn start() -> Self {
        let bin = tansu_bin();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The released port can be taken before Tansu binds it: retry on a new one.
        let mut failures = Vec::new();
        let (process, upstream) = loop {
            let upstream: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut process = spawn_tansu(&bin, upstream, addr);
            match wait_listening(&mut process, upstream).await {
                Ok(()) => break (process, upstream),
                Err(e) => {
                    drop(process);
                    failures.push(e);
                    assert!(failures.len() < 3, "private Tansu broker did not start: {failures:?}");
                }
            }
        };
        let proxy = Arc::new(Proxy { upstream, state: Mutex::new(ProxyState::default()) });
        let accept = tokio::spawn(accept_loop(listener, proxy.clone()));
        let broker = Self { addr, proxy, accept, _tansu: process };

        let bootstrap = broker.brokers();
        let advertised = tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
            let meta = client.fetch_metadata(None, Duration::from_secs(10)).expect("metadata from the private broker");
            meta.brokers().iter().map(|b| format!("{}:{}", b.host(), b.port())).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert_eq!(advertised, [broker.brokers()], "the private broker must advertise its proxy");
        broker
    }

    /// `KAFKA_BROKERS` for services using this broker.
    pub fn brokers(&self) -> String {
        self.addr.to_string()
    }

    /// Outage: closes every open connection and closes new ones at once.
    pub fn pause(&self) {
        let mut state = self.proxy.state.lock().unwrap();
        state.paused = true;
        for conn in state.connections.drain(..) {
            conn.abort();
        }
    }

    pub fn resume(&self) {
        self.proxy.state.lock().unwrap().paused = false;
    }
}

async fn wait_listening(process: &mut Tethered, addr: SocketAddr) -> Result<(), String> {
    // Tansu is usually ready within milliseconds.
    for _ in 0..200 {
        if let Some(status) = process.exited() {
            return Err(format!("tansu exited ({status}) before listening on {addr}"));
        }
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("tansu not listening on {addr} after 10s"))
}

async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let inbound = match listener.accept().await {
            Ok((inbound, _)) => inbound,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Decide and register under the lock, so `pause` can't miss a connection.
        let mut state = proxy.state.lock().unwrap();
        if state.paused {
            continue; // dropping `inbound` closes it: the broker looks down
        }
        state.connections.retain(|c| !c.is_finished());
        let upstream = proxy.upstream;
        let conn = tokio::spawn(async move {
            let mut inbound = inbound;
            if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        state.connections.push(conn.abort_handle());
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.accept.abort();
        self.pause();
        // Then `_tansu` drops: Tansu is stopped.
    }
}
