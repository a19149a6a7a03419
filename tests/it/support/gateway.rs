//! The gateway under test, in-process, on an ephemeral loopback port.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vision_gateway::config::{Config, RawConfig};
use vision_gateway::server::Drained;

/// A running gateway. Dropping it aborts the server task.
pub struct Gateway {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Drained>>,
}

/// A config routing every model (and `pixtral-12b-2409` explicitly) to `upstream`.
pub fn config_for(upstream: SocketAddr, extra_upstream: &str, extra_model: &str) -> String {
    format!(
        r#"
[server]
shutdown_grace_secs = 5
[[upstreams]]
name = "standin"
base_url = "http://{upstream}/v1"
first_byte_timeout_ms = 2000
{extra_upstream}
[[models]]
id = "pixtral-12b-2409"
upstream = "standin"
{extra_model}
[[models]]
id = "*"
upstream = "standin"
"#
    )
}

impl Gateway {
    /// Starts a gateway from TOML text.
    pub async fn from_toml(toml: &str) -> Self {
        let raw = RawConfig::from_toml(toml).expect("test config parses");
        let config = Config::from_raw(&raw, None).expect("test config validates");
        Self::from_config(config).await
    }

    /// Starts a gateway with every model routed to `upstream`.
    pub async fn to(upstream: SocketAddr) -> Self {
        Self::from_toml(&config_for(upstream, "", "")).await
    }

    /// Starts a gateway from a validated config.
    pub async fn from_config(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            vision_gateway::serve_on(listener, &config, shutdown)
                .await
                .expect("gateway runs")
        });
        Self {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Begins a graceful shutdown (as SIGTERM does).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server task to end and says how the drain went.
    pub async fn finished(&mut self) -> Drained {
        let task = self.task.take().expect("not yet awaited");
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("gateway stops within 10 s")
            .expect("gateway task did not panic")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}
