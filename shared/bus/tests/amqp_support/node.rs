//! A RabbitMQ node of a test's own, for tests that restart their broker: started and
//! stopped by the test, so the shared broker at 127.0.0.1:5672 is never touched.
//!
//! Shared by the bus crate's tests (`amqp_support`) and the integration tests (`tests/lib.rs`
//! includes this file by path); it uses the standard library and `tempfile` only.
//!
//! The node has its own name, AMQP port, distribution port, configuration, plugin list and
//! mnesia/log directories, all under a temporary directory: nothing it reads or writes is
//! the system node's. It registers its name with the machine's `epmd` (port 4369), as every
//! Erlang node does, and unregisters when it stops.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a node may take to boot or to stop: seconds when idle, more on a loaded machine.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// A running `rabbitmq-server` (its whole process group), stopped when dropped.
pub struct BrokerNode {
    pub name: String,
    pub amqp_port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
    server: Option<Child>,
    /// How many times the node was started, so each run logs to its own file.
    runs: u32,
}

impl BrokerNode {
    /// Starts a node for `test` and waits until it speaks AMQP.
    pub fn start(test: &str) -> BrokerNode {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::Builder::new().prefix("rfleet-broker-").tempdir().expect("temp dir for a broker node");
        let [amqp_port, dist_port] = free_ports();
        let name = format!("rfleet-{test}-{}-{n}@localhost", std::process::id());
        // The system's rabbitmq.conf names 5672 and its rabbitmq-env.conf the system node:
        // files of our own keep both out. Listeners come from RABBITMQ_NODE_PORT, and no
        // plugin (management, prometheus: listeners of their own) is enabled.
        std::fs::write(dir.path().join("rabbitmq.conf"), "# a test node: its listener is RABBITMQ_NODE_PORT\n")
            .unwrap();
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let mut node = BrokerNode { name, amqp_port, dist_port, dir, server: None, runs: 0 };
        node.boot();
        node
    }

    /// `amqp://` URL of this node, for the default vhost.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// Stops the node (SIGTERM to its process group, SIGKILL past the limit) and waits until
    /// it is gone: from then on connections to its port are refused.
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else { return };
        signal_group(&server, "TERM");
        let start = Instant::now();
        while server.try_wait().expect("wait for rabbitmq-server").is_none() {
            if start.elapsed() > STOP_LIMIT {
                signal_group(&server, "KILL");
                let _ = server.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The script exits once the Erlang VM has; anything left of the group goes now.
        signal_group(&server, "KILL");
    }

    /// Starts the stopped node again with its data (durable queues come back), and waits
    /// until it speaks AMQP.
    pub fn start_again(&mut self) {
        self.boot();
    }

    fn boot(&mut self) {
        assert!(self.server.is_none(), "{} is already running", self.name);
        self.runs += 1;
        let path = |name: &str| self.dir.path().join(name);
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(path(sub)).unwrap();
        }
        let output = std::fs::File::create(path(&format!("server-{}.out", self.runs))).unwrap();
        let mut command = Command::new(server_script());
        command
            .current_dir(self.dir.path())
            // Erlang keeps its cookie in $HOME: this node's is its own.
            .env("HOME", self.dir.path())
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_PID_FILE", path("node.pid"))
            // Distribution on loopback only, and the machine's epmd on loopback.
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_SERVER_START_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            // A group of its own: the script runs the Erlang VM as a child, and stopping the
            // node means signalling both.
            .process_group(0);
        let mut server = command.spawn().unwrap_or_else(|e| panic!("start {}: {e}", server_script().display()));
        let start = Instant::now();
        while !speaks_amqp(self.amqp_port) {
            if let Some(status) = server.try_wait().unwrap() {
                panic!("{} exited with {status} while booting:\n{}", self.name, self.log_tail());
            }
            if start.elapsed() > BOOT_LIMIT {
                signal_group(&server, "KILL");
                let _ = server.wait();
                panic!("{} did not speak AMQP within {BOOT_LIMIT:?}:\n{}", self.name, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.server = Some(server);
    }

    /// The last lines the node printed, for a failure message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("server-{}.out", self.runs)))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for BrokerNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The real `rabbitmq-server` script: Debian's `/usr/sbin` one is a wrapper that switches
/// to the `rabbitmq` user and the system node's directories. `RFLEET_TEST_RABBITMQ_SERVER`
/// names another.
fn server_script() -> PathBuf {
    if let Ok(path) = std::env::var("RFLEET_TEST_RABBITMQ_SERVER") {
        return path.into();
    }
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if debian.is_file() {
        debian
    } else {
        "rabbitmq-server".into()
    }
}

/// Two ports free now, below Linux's ephemeral range (32768 and up), so that no outgoing
/// connection takes one as its local port while the node is down for a restart.
fn free_ports() -> [u16; 2] {
    let free = |port: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
    // Start somewhere that depends on the process, so parallel test binaries spread out.
    let offset = (std::process::id() as u16).wrapping_mul(7919) % 10_000;
    let mut found = Vec::new();
    for i in 0..10_000u16 {
        let port = 20_000 + (offset + i) % 10_000;
        if free(port) {
            found.push(port);
            if found.len() == 2 {
                return [found[0], found[1]];
            }
        }
    }
    panic!("no two free ports between 20000 and 30000");
}

/// Whether a broker answers the AMQP 0-9-1 protocol header with a method frame
/// (`connection.start`). An open port alone is not enough: the node opens some before
/// its broker runs.
fn speaks_amqp(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut frame_type = [0u8; 1];
    stream.write_all(b"AMQP\x00\x00\x09\x01").is_ok() && stream.read_exact(&mut frame_type).is_ok() && frame_type[0] == 1
}

/// Sends `signal` to the process group led by `child` (the `kill` command: the bus crate's
/// tests have no libc).
fn signal_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
}
