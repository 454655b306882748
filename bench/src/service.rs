//! The service under test: a child `order-timeout serve` process, or one already running. Started ready to serve, stopped gracefully, and
//! its resident memory read from /proc.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use order_timeout::config::Config;

/// How long a started service may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop may take before the child is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running service and how to stop it.
pub struct Service {
    /// Base URL of its API.
    pub url: String,
    /// Its process, for memory readings.
    pid: Option<u32>,
    /// What stopping means.
    kind: Kind,
}

enum Kind {
    Child(Child),
    External,
}

/// Resident memory of a process, from /proc/<pid>/status.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// VmRSS: resident now, in MiB.
    pub rss_mib: f64,
    /// VmHWM: the highest resident size so far, in MiB.
    pub peak_mib: f64,
}

impl Service {
    /// Runs `<bin> serve` with `config` in its environment and its output appended to `log`.
    pub async fn spawn_child(bin: &Path, config: Config, log: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(bin)
            .arg("serve")
            .env("DATABASE_URL", &config.database_url)
            .env("AMQP_URL", &config.amqp_url)
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("QUEUE_PREFIX", &config.queue_prefix)
            .env(
                "ORDER_TIMEOUT",
                format!("{}ms", config.order_timeout.as_millis()),
            )
            .env("DATABASE_POOL_SIZE", config.database_pool_size.to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting `order-timeout serve`")?;
        let mut service = Self {
            url: format!("http://127.0.0.1:{port}"),
            pid: Some(child.id()),
            kind: Kind::Child(child),
        };
        service
            .wait_ready()
            .await
            .with_context(|| format!("the service did not become ready; see {}", log.display()))?;
        Ok(service)
    }

    /// A service someone else runs.
    pub fn external(url: &str, pid: Option<u32>) -> Self {
        Self {
            url: url.to_owned(),
            pid,
            kind: Kind::External,
        }
    }

    /// The service's process id, when it is known (for CPU and memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The resident memory of the service's process, when it is known.
    pub fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let field = |name: &str| -> Option<f64> {
            let line = status.lines().find(|line| line.starts_with(name))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        };
        Some(Memory {
            rss_mib: field("VmRSS:")?,
            peak_mib: field("VmHWM:")?,
        })
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let readyz = format!("{}/readyz", self.url);
        let started = Instant::now();
        loop {
            if let Kind::Child(child) = &mut self.kind
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!("the service exited with {status}");
            }
            let ready = client
                .get(&readyz)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                anyhow::bail!("not ready after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the service gracefully (SIGTERM for a child, killed if it lingers).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        match std::mem::replace(&mut self.kind, Kind::External) {
            Kind::Child(mut child) => {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                let started = Instant::now();
                while child.try_wait()?.is_none() {
                    if started.elapsed() > STOP_TIMEOUT {
                        child.kill()?;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(())
            }
            Kind::External => Ok(()),
        }
    }
}

impl Drop for Service {
    /// A bench that fails half-way must not leave a service running.
    fn drop(&mut self) {
        match &mut self.kind {
            Kind::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Kind::External => {}
        }
    }
}
