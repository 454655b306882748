//! A throwaway 3-node RabbitMQ cluster on this machine, apart from the machine's own
//! broker (`rabbit@localhost` on 5672 is never touched, stopped or joined).
//!
//! Each node is `ot-cN@localhost` with its own AMQP port (5681..5683), distribution port
//! (25681..25683), data, log, pid, plugins and config files under `/tmp/ot-cluster/ot-cN`,
//! owned by the `rabbitmq` user. The machine's `/etc/rabbitmq/rabbitmq.conf` pins
//! `listeners.tcp.local` to 5672, so each node gets a config file of its own.
//!
//! The Erlang cookie: run as root, `rabbitmq-server` and `rabbitmqctl` re-run themselves
//! through `su rabbitmq` (which keeps the environment but sets HOME to
//! `/var/lib/rabbitmq`), so every node and every CLI call reads the same
//! `/var/lib/rabbitmq/.erlang.cookie`; run as `rabbitmq` it is the same file. Nothing to
//! copy.
//!
//! [`Cluster`] stops every node and deletes its directory when dropped (a failing test
//! included), and [`Cluster::start`] first removes what a crashed earlier run left.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Where the nodes' directories live.
const BASE: &str = "/tmp/ot-cluster";
/// (node short name, AMQP port, distribution port) of the three nodes.
const NODES: [(&str, u16, u16); 3] = [
    ("ot-c1", 5681, 25681),
    ("ot-c2", 5682, 25682),
    ("ot-c3", 5683, 25683),
];

/// One node of the test cluster.
#[derive(Debug, Clone)]
pub struct Node {
    /// Erlang node name, `ot-cN@localhost`.
    pub name: String,
    /// AMQP listener port on 127.0.0.1.
    pub port: u16,
    /// Erlang distribution port, so the nodes do not fight over 25672.
    dist_port: u16,
    /// The node's own directory (data, logs, pid file, config).
    dir: PathBuf,
}

impl Node {
    fn new(short: &str, port: u16, dist_port: u16) -> Self {
        Self {
            name: format!("{short}@localhost"),
            port,
            dist_port,
            dir: PathBuf::from(BASE).join(short),
        }
    }

    /// The node's AMQP URL (guest may log in over loopback: `loopback_users = none`).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("node.pid")
    }

    /// Environment that makes `rabbitmq-server` and `rabbitmqctl` this node and no other.
    fn env(&self) -> Vec<(&'static str, String)> {
        let path = |p: &str| self.dir.join(p).display().to_string();
        vec![
            ("RABBITMQ_NODENAME", self.name.clone()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", path("mnesia")),
            ("RABBITMQ_LOG_BASE", path("log")),
            ("RABBITMQ_PID_FILE", path("node.pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins")),
            ("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf")),
        ]
    }

    /// Runs `tool` (rabbitmqctl, rabbitmq-server, rabbitmq-queues) as this node.
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(tool)
            .envs(self.env())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool} could not run: {e}"))
    }

    /// `rabbitmqctl -n NODE args…`, panicking with its output when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        let output = self.run("rabbitmqctl", &all);
        assert!(
            output.status.success(),
            "rabbitmqctl -n {} {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Fresh directories and config owned by `rabbitmq`.
    fn prepare(&self) {
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(self.dir.join(sub)).expect("node directory");
        }
        let config = format!(
            "listeners.tcp.local = 127.0.0.1:{}\nloopback_users = none\n",
            self.port
        );
        std::fs::write(self.dir.join("rabbitmq.conf"), config).expect("node config");
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&self.dir)
            .status()
            .expect("chown");
        assert!(chown.success(), "chown of {} failed", self.dir.display());
    }

    /// Starts the node's VM in the background and waits until RabbitMQ runs on it.
    pub fn boot(&self) {
        let _ = std::fs::remove_file(self.pid_file());
        let started = self.run("rabbitmq-server", &["-detached"]);
        assert!(
            started.status.success(),
            "rabbitmq-server for {} failed: {}",
            self.name,
            String::from_utf8_lossy(&started.stderr)
        );
        let pid_file = self.pid_file().display().to_string();
        self.ctl(&["wait", &pid_file, "--timeout", "90"]);
    }

    /// The pid of the node's Erlang VM (beam.smp), from its pid file.
    pub fn beam_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// kill -9 of the node's Erlang VM: the crash, not a clean stop.
    pub fn kill_vm(&self) {
        let pid = self.beam_pid().expect("node pid file");
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {pid} ({}) failed", self.name);
    }

    /// Messages each quorum queue of `prefix` holds for at-least-once dead-lettering
    /// (expired, not yet confirmed by the target): `list_queues` does not show them.
    pub fn dead_letter_backlog(&self, prefix: &str) -> String {
        let expression = format!(
            "[{{element(4, amqqueue:get_name(Q)), rabbit_quorum_queue:info(Q, [messages_dlx, messages])}} || Q <- rabbit_amqqueue:list(<<\"/\">>), binary:match(element(4, amqqueue:get_name(Q)), <<\"{prefix}\">>) =/= nomatch]."
        );
        let output = self.run("rabbitmqctl", &["-n", &self.name, "eval", &expression]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// Stops the node whatever its state and removes its directory; quiet on failure.
    fn remove(&self) {
        let mut stop = vec!["-n", self.name.as_str(), "stop", "--timeout", "30"];
        if let Some(pid) = self.beam_pid() {
            // A VM that does not answer the CLI still dies with its pid.
            let output = self.run("rabbitmqctl", &stop);
            if !output.status.success() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        } else {
            stop.truncate(3);
            let _ = self.run("rabbitmqctl", &stop);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running 3-node cluster; stopped and deleted on drop.
pub struct Cluster {
    /// The nodes, the first the one the others joined.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Removes leftovers of a crashed run, then boots three nodes and clusters them.
    /// Blocking (about 25-40 s on 2 cores): call it from `spawn_blocking`.
    pub fn start() -> Self {
        let nodes: Vec<Node> = NODES
            .iter()
            .map(|(short, port, dist)| Node::new(short, *port, *dist))
            .collect();
        for node in &nodes {
            node.remove();
        }
        // Created before the first boot: a failure from here on still cleans up.
        let cluster = Self { nodes };
        // The three VMs boot side by side (each takes 15-30 s on 2 shared cores).
        std::thread::scope(|scope| {
            for node in &cluster.nodes {
                scope.spawn(|| {
                    node.prepare();
                    node.boot();
                });
            }
        });
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            node.ctl(&["stop_app"]);
            node.ctl(&["reset"]);
            node.ctl(&["join_cluster", &first]);
            node.ctl(&["start_app"]);
        }
        let status = cluster.nodes[0].ctl(&["cluster_status", "--formatter", "json"]);
        for node in &cluster.nodes {
            assert!(status.contains(&node.name), "{} not in {status}", node.name);
        }
        cluster
    }

    /// `AMQP_URL` listing every node.
    pub fn amqp_url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(Node::url).collect();
        urls.join(",")
    }

    /// The node whose AMQP port is `port`.
    pub fn node_on_port(&self, port: u16) -> Option<&Node> {
        self.nodes.iter().find(|n| n.port == port)
    }

    /// The node currently leading quorum queue `queue`, asked of a node that runs.
    pub fn leader_of(&self, queue: &str) -> Option<&Node> {
        let asked = self.nodes.iter().find_map(|node| {
            let output = node.run(
                "rabbitmqctl",
                &[
                    "-n",
                    &node.name,
                    "list_queues",
                    "name",
                    "leader",
                    "--quiet",
                    "--no-table-headers",
                ],
            );
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
        })?;
        let leader = asked.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(queue)).then(|| fields.next().map(str::to_owned))?
        })?;
        self.nodes.iter().find(|n| n.name == leader)
    }
}

impl Cluster {
    /// What the queues of `prefix` hold and who leads them, for a failure message.
    pub fn describe_queues(&self, prefix: &str) -> String {
        let items = [
            "name",
            "leader",
            "online",
            "messages_ready",
            "messages_unacknowledged",
        ];
        for node in &self.nodes {
            let mut args = vec!["-n", node.name.as_str(), "list_queues"];
            args.extend_from_slice(&items);
            args.extend_from_slice(&["--quiet", "--no-table-headers"]);
            let output = node.run("rabbitmqctl", &args);
            if output.status.success() {
                let listing = String::from_utf8_lossy(&output.stdout);
                let ours: Vec<&str> = listing
                    .lines()
                    .filter(|line| line.starts_with(prefix))
                    .collect();
                return format!(
                    "{items:?} asked of {}:\n{}\nat-least-once dead-letter backlog (messages_dlx):\n{}\nnode logs:\n{}",
                    node.name,
                    ours.join("\n"),
                    node.dead_letter_backlog(prefix),
                    self.log_excerpts()
                );
            }
        }
        "no node answered list_queues".to_owned()
    }

    /// The last log lines of every node that speak of dead-lettering, crashes or errors.
    pub fn log_excerpts(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let Ok(entries) = std::fs::read_dir(node.dir.join("log")) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(text) = std::fs::read_to_string(entry.path()) else {
                    continue;
                };
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        let l = l.to_lowercase();
                        ["dlx", "dead_letter", "crash", "[error]"]
                            .iter()
                            .any(|word| l.contains(word))
                    })
                    .collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                out.push_str(&format!(
                    "== {} ({} lines)\n{}\n",
                    entry.path().display(),
                    lines.len(),
                    tail.join("\n")
                ));
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.remove();
        }
        let _ = std::fs::remove_dir_all(BASE);
    }
}
