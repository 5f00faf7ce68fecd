//! A private Docker daemon for tests, and the images built and run with it.
//!
//! The daemon is Debian's `dockerd` with its own data and exec roots, socket and pid file
//! under `<repo>/.rfleet/docker/` (so a second run reuses the layers the first built), no
//! bridge and no iptables rules: containers run with `--network=host` and builds use the
//! host's network, so the test changes nothing on the machine outside that folder. One
//! daemon at a time: [`Daemon::start`] holds a file lock until the daemon is dropped, and
//! dropping it stops the daemon by its pid, test failure or not.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{poll_until, repo_root, target_dir};

/// Debian's docker client (docker.io): with DOCKER_BUILDKIT=1 it builds with the daemon's
/// own BuildKit, which needs no buildx plugin.
pub const DOCKER_CLIENT: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";

/// A `dockerd` of the test's own, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    _lock: File,
}

impl Daemon {
    /// The folder holding the daemon's state: `<repo>/.rfleet/docker`.
    pub fn dir() -> PathBuf {
        repo_root().join(".rfleet/docker")
    }

    /// Starts the daemon (waiting for any other test's to be dropped first) and waits until
    /// it answers.
    pub fn start() -> Daemon {
        for tool in [DOCKER_CLIENT, DOCKERD] {
            assert!(Path::new(tool).is_file(), "{tool} is missing: apt-get install docker.io (deploy/setup.sh test)");
        }
        let dir = Daemon::dir();
        std::fs::create_dir_all(&dir).unwrap();
        let lock = File::create(dir.join("lock")).unwrap();
        // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock the docker daemon");
        let pidfile = dir.join("dockerd.pid");
        stop_leftover(&pidfile);
        unmount_leftovers(&dir);
        let socket = dir.join("docker.sock");
        let log = File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new(DOCKERD)
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut daemon = Daemon { child, socket, _lock: lock };
        let answers = poll_until(Duration::from_secs(60), || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("dockerd exited with {status}; see {}", dir.join("dockerd.log").display());
            }
            daemon
                .docker()
                .args(["version", "--format", "{{.Server.Version}}"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(answers, "dockerd did not answer within 60 s; see {}", dir.join("dockerd.log").display());
        daemon
    }

    /// The docker client, talking to this daemon.
    pub fn docker(&self) -> Command {
        let mut command = Command::new(DOCKER_CLIENT);
        command.arg("-H").arg(format!("unix://{}", self.socket.display())).env("DOCKER_BUILDKIT", "1");
        command
    }

    /// The client command as one string, for scripts that take it in `DOCKER`
    /// (deploy/docker/base.sh and build.sh).
    pub fn docker_env(&self) -> String {
        format!("{DOCKER_CLIENT} -H unix://{}", self.socket.display())
    }

    /// Runs `docker <args>`, failing the test with its output unless it succeeds; returns
    /// its stdout, trimmed.
    pub fn run(&self, args: &[&str]) -> String {
        let output = self.docker().args(args).output().expect("run docker");
        String::from_utf8_lossy(&checked(output, &format!("docker {}", args.join(" "))).stdout).trim().to_string()
    }

    /// Builds `dockerfile` (default `<context>/Dockerfile`) with `context` as the build
    /// context and tags the image `tag`; `RUN apt-get` has the host's network. For images
    /// made from other images of these tests, e.g. a model image from the build context
    /// `rfleet package` writes (FROM `rfleet-worker:<version>`).
    pub fn build(&self, context: &Path, dockerfile: Option<&Path>, tag: &str, build_args: &[(&str, &str)]) {
        let mut command = self.docker();
        command.args(["build", "--network=host", "--progress=plain", "--tag", tag]);
        if let Some(dockerfile) = dockerfile {
            command.arg("--file").arg(dockerfile);
        }
        for (key, value) in build_args {
            command.arg("--build-arg").arg(format!("{key}={value}"));
        }
        let output = command.arg(context).output().expect("run docker build");
        checked(output, &format!("docker build of {tag} from {}", context.display()));
    }

    /// Builds debian:bookworm-slim (unless the daemon has it) and both images with the
    /// scripts of deploy/docker, from this test binary's sibling binaries: the images a
    /// model image (`rfleet package`) builds FROM.
    pub fn build_rfleet_images(&self) {
        let root = repo_root();
        let bin_dir = target_dir();
        let bin_dir = bin_dir.strip_prefix(&root).unwrap_or_else(|_| {
            panic!("the binaries ({}) must be under the repository for its build context", bin_dir.display())
        });
        for (script, args) in [
            ("deploy/docker/base.sh", vec![]),
            ("deploy/docker/build.sh", vec!["--bin-dir", bin_dir.to_str().unwrap()]),
        ] {
            let output = Command::new(root.join(script))
                .args(&args)
                .env("DOCKER", self.docker_env())
                .current_dir(&root)
                .output()
                .unwrap_or_else(|e| panic!("run {script}: {e}"));
            let output = checked(output, script);
            print!("{}", String::from_utf8_lossy(&output.stdout));
        }
        // The images a rebuild untagged: the daemon's folder is kept between runs, so it
        // would grow by them every time.
        self.run(&["image", "prune", "--force"]);
    }

    /// Starts a container: `docker run --detach <args>`, removed when the guard is dropped.
    pub fn container(&self, args: &[&str]) -> Container<'_> {
        let mut all = vec!["run", "--detach"];
        all.extend_from_slice(args);
        Container { id: self.run(&all), daemon: self }
    }

    /// Creates a container of `image` without starting it (to export its filesystem, say),
    /// removed when the guard is dropped.
    pub fn create(&self, image: &str) -> Container<'_> {
        Container { id: self.run(&["create", image]), daemon: self }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        unmount_leftovers(&Daemon::dir());
    }
}

/// dockerd leaves its default network namespace mounted in its exec root when it exits
/// (Docker 20.10): unmounted, so the folder can be deleted and mounts do not pile up.
fn unmount_leftovers(dir: &Path) {
    let netns = std::ffi::CString::new(dir.join("exec/netns/default").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a plain umount2 of a path we own; it fails (EINVAL, ENOENT) once nothing is
    // mounted there, which ends the loop.
    while unsafe { libc::umount2(netns.as_ptr(), libc::MNT_DETACH) } == 0 {}
}

impl Daemon {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child. dockerd stops its containers and containerd
            // on SIGTERM.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            if poll_until(Duration::from_secs(60), || matches!(self.child.try_wait(), Ok(Some(_)))) {
                return;
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A daemon left running by a test process that was killed (its lock died with it, its pid
/// file did not): stopped, so this test starts its own on the same folders.
fn stop_leftover(pidfile: &Path) {
    let Some(pid) = std::fs::read_to_string(pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok()) else { return };
    let is_dockerd =
        |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "dockerd");
    if !is_dockerd(pid) {
        return;
    }
    // SAFETY: a plain signal to the dockerd whose pid file is in our own folder.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(poll_until(Duration::from_secs(60), || !is_dockerd(pid)), "the leftover dockerd {pid} did not stop");
}

/// `output` when its command succeeded; otherwise fails naming `what`, with its output.
pub fn checked(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A container of the daemon's, removed (`docker rm --force`) when dropped.
pub struct Container<'d> {
    pub id: String,
    daemon: &'d Daemon,
}

impl Container<'_> {
    /// What the container has written to stdout and stderr so far.
    pub fn logs(&self) -> String {
        let output = self.daemon.docker().args(["logs", &self.id]).output().expect("docker logs");
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }

    /// Waits until a line of the container's output contains `text`, and returns that line;
    /// fails if the container stops first or `limit` passes.
    pub fn wait_for_line(&self, text: &str, limit: Duration) -> String {
        let (mut logs, mut found) = (String::new(), None);
        let printed = poll_until(limit, || {
            logs = self.logs();
            found = logs.lines().find(|l| l.contains(text)).map(str::to_string);
            if found.is_none() {
                let running = self.inspect("{{.State.Running}}");
                assert!(running == "true", "container {} stopped before printing {text:?}:\n{logs}", self.id);
            }
            found.is_some()
        });
        assert!(printed, "container {} did not print {text:?} within {limit:?}:\n{logs}", self.id);
        found.expect("the line found")
    }

    /// `docker inspect --format <format>` of the container.
    pub fn inspect(&self, format: &str) -> String {
        self.daemon.run(&["inspect", "--format", format, &self.id])
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ =
            self.daemon.docker().args(["rm", "--force", &self.id]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}
