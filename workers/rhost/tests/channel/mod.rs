//! Starting the real `rfleet-rhost` as the worker's supervisor does: the channel on file
//! descriptor [`HOST_FD`], shared by the test files that drive a host.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use protocol::host::{ModelSpec, HOST_FD};

/// Spawns `rfleet-rhost` (its stdin /dev/null, stdout `stdout`, stderr this test's, with
/// what `configure` adds) and answers it with our end of its channel.
pub fn spawn(stdout: Stdio, configure: impl FnOnce(&mut Command)) -> (Child, UnixStream) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let their_fd = theirs.as_raw_fd();
    let mut command = Command::new(env!("CARGO_BIN_EXE_rfleet-rhost"));
    command.stdin(Stdio::null()).stdout(stdout).stderr(Stdio::inherit());
    configure(&mut command);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if their_fd == HOST_FD {
                // dup2 onto itself keeps close-on-exec, so clear it by hand.
                let flags = libc::fcntl(HOST_FD, libc::F_GETFD);
                libc::fcntl(HOST_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(their_fd, HOST_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("spawn rfleet-rhost");
    // The child holds its own copy; ours must close or we would never see its end.
    drop(theirs);
    (child, ours)
}

/// A package as the supervisor describes it: `model.toml` read the way the worker reads it.
pub fn package_spec(dir: &Path) -> ModelSpec {
    let manifest = settings::Manifest::read(dir).expect("read model.toml");
    ModelSpec {
        name: manifest.name.clone().unwrap_or_else(|| dir.file_name().unwrap().to_string_lossy().into_owned()),
        version: manifest.version.clone(),
        dir: dir.to_path_buf(),
        schema: manifest.schema(),
        predict_type: manifest.predict_type.clone(),
        engine: manifest.engine.unwrap_or_default(),
        r_fallback: manifest.r_fallback,
    }
}
