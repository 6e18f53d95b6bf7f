//! Compiling in a short-lived helper process, so that nothing of a compile stays in the
//! host's memory. Compiling in the host on an engine of its own and trimming the heap after
//! still leaves heap glibc cannot return (an 18 MB Python component kept the daemon at
//! 1.6 x what a restart from the warm cache holds); a process that exits returns it all.
//!
//! The protocol, both ends of which are here: the host starts the helper with the component
//! on its stdin (closed after), and the helper answers on stdout with the serialized artifact
//! and exit status 0; or, exit status [`EXIT_INVALID`] with the reason the bytes are not a
//! component on stderr; or any other status with what went wrong on stderr. The host adopts
//! the artifact as it adopts one compiled in its own process; wasmtime checks that it was
//! made for the host engine's settings and version.
// The helper asks to die with its host (`prctl`), a C call.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use capsid_core::limits::{MAX_COMPILE_TIME, MAX_COMPILED_ARTIFACT_BYTES, MAX_COMPONENT_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::compile::{self, Failure};

/// The helper's exit status when the bytes it was given are not a component.
const EXIT_INVALID: u8 = 3;

/// The environment variable naming the host's pid, so the helper can ask to die with it.
const PARENT_ENV: &str = "CAPSID_COMPILE_PARENT";

/// Most of the helper's stderr kept for an error message, in bytes.
const MAX_HELPER_MESSAGE_BYTES: u64 = 16 * 1024;

/// How to start a compile helper: a program (and its arguments) whose `main` is
/// [`serve_compile_helper`]. The `capsid` binary is one (`capsid compile-component`, what
/// its daemon uses); an embedder may ship its own or re-run its own executable.
///
/// The helper runs with an empty environment (but for the host's pid). It asks to be killed
/// when the thread that started it exits (`PR_SET_PDEATHSIG`), so start compiles from
/// threads that live as long as they do: a multi-threaded tokio runtime's workers do.
#[derive(Debug, Clone)]
pub struct CompileHelper {
    program: PathBuf,
    args: Vec<OsString>,
    timeout: Duration,
    max_artifact: u64,
}

impl CompileHelper {
    /// A helper run as `program` with no arguments, killed after [`MAX_COMPILE_TIME`].
    ///
    /// # Safety
    /// What `program` writes on its stdout when it exits with status 0 is loaded as native
    /// code (wasmtime checks only that it was made for this engine's settings and version):
    /// `program` must run [`serve_compile_helper`] of this same build of capsid.
    pub unsafe fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            timeout: MAX_COMPILE_TIME,
            max_artifact: MAX_COMPILED_ARTIFACT_BYTES,
        }
    }

    /// Adds an argument to the helper's command line.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Kills a helper still compiling after `timeout` (the compile fails).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Compiles `bytes` in a new helper process and returns the artifact it wrote. The
    /// helper is killed if this future is dropped or the timeout passes.
    pub(super) async fn compile(&self, bytes: &[u8]) -> Result<Vec<u8>, Failure> {
        let program = self.program.display();
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Failure::Runtime(format!("cannot start the compile helper {program}: {e}"))
            })?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Failure::Runtime(format!(
                "the compile helper {program} was started without its pipes"
            )));
        };
        let exchange = async {
            let send = async {
                // A helper that stops reading has failed; its status says why.
                let _ = stdin.write_all(bytes).await;
                drop(stdin);
            };
            let mut artifact = Vec::new();
            let read_artifact = async {
                let read = stdout
                    .take(self.max_artifact + 1)
                    .read_to_end(&mut artifact)
                    .await;
                if artifact.len() as u64 > self.max_artifact {
                    // It would block on the rest, holding its stderr open: its answer is
                    // refused below anyway.
                    let _ = child.start_kill();
                }
                read
            };
            let read_message = async {
                let mut stderr = stderr;
                let mut message = Vec::new();
                let _ = (&mut stderr)
                    .take(MAX_HELPER_MESSAGE_BYTES)
                    .read_to_end(&mut message)
                    .await;
                // The rest is read and dropped, so a talkative helper never blocks on it.
                let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
                message
            };
            let ((), read, message) = tokio::join!(send, read_artifact, read_message);
            let status = child.wait().await;
            (read, status, artifact, message)
        };
        let Ok((read, status, artifact, message)) =
            tokio::time::timeout(self.timeout, exchange).await
        else {
            return Err(Failure::Runtime(format!(
                "the compile helper {program} took longer than {:?} and was killed",
                self.timeout
            )));
        };
        if artifact.len() as u64 > self.max_artifact {
            return Err(Failure::Runtime(format!(
                "the compile helper {program} wrote more than {} bytes and was killed",
                self.max_artifact
            )));
        }
        let message = String::from_utf8_lossy(&message).trim().to_owned();
        let status = status.map_err(|e| {
            Failure::Runtime(format!("cannot wait for the compile helper {program}: {e}"))
        })?;
        match status.code() {
            Some(0) => {}
            Some(code) if code == i32::from(EXIT_INVALID) => return Err(Failure::Invalid(message)),
            Some(code) => {
                return Err(Failure::Runtime(format!(
                    "the compile helper {program} failed (exit status {code}): {message}"
                )));
            }
            None => {
                use std::os::unix::process::ExitStatusExt;
                let signal = status.signal().unwrap_or_default();
                return Err(Failure::Runtime(format!(
                    "the compile helper {program} was killed by signal {signal}"
                )));
            }
        }
        read.map_err(|e| {
            Failure::Runtime(format!(
                "cannot read the compile helper {program}'s answer: {e}"
            ))
        })?;
        Ok(artifact)
    }
}

/// The helper's side: reads a component on stdin, compiles it for the runtime engine's
/// configuration and writes the artifact on stdout. Call it as the whole `main` of the
/// helper program and return what it returns.
pub fn serve_compile_helper() -> ExitCode {
    die_with_parent();
    let mut bytes = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_COMPONENT_BYTES + 1)
        .read_to_end(&mut bytes);
    if let Err(e) = read {
        eprintln!("cannot read the component on stdin: {e}");
        return ExitCode::FAILURE;
    }
    if bytes.len() as u64 > MAX_COMPONENT_BYTES {
        eprintln!("the component is larger than {MAX_COMPONENT_BYTES} bytes");
        return ExitCode::from(EXIT_INVALID);
    }
    match compile::compile_artifact(&super::config(), &bytes) {
        Ok(artifact) => {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&artifact).and_then(|()| out.flush()) {
                eprintln!("cannot write the compiled component: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Invalid(reason)) => {
            eprintln!("{reason}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(Failure::Runtime(reason)) => {
            eprintln!("{reason}");
            ExitCode::FAILURE
        }
    }
}

/// When started by a host (which names itself in the environment), dies with it: a compile
/// nobody waits for is wasted. Exits at once if the host is already gone.
fn die_with_parent() {
    let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
    if std::os::unix::process::parent_id() != parent {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_helper_writing_past_the_limit_is_killed_not_waited_for() {
        // SAFETY: the output is refused for its size before anything could adopt it.
        let mut helper = unsafe { CompileHelper::new("/usr/bin/yes") };
        helper.max_artifact = 100_000;
        let started = std::time::Instant::now();
        let Err(Failure::Runtime(message)) = helper.compile(b"component").await else {
            panic!("an oversized answer was accepted");
        };
        assert!(
            message.contains("wrote more than 100000 bytes"),
            "{message}"
        );
        // Correctness bound, not a speed figure: `yes` never stops by itself.
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
