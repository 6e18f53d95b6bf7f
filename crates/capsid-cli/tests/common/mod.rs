//! What the binary's suites share: a private home driven through the real `capsid` binary,
//! and raw frames for talking to its daemon by hand.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use capsid_core::limits::DAEMON_PROTOCOL_VERSION;
use capsid_integration_tests::PrivateHome;
use capsid_protocol::{Hello, Method, Request};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub(crate) const CAPSID: &str = env!("CARGO_BIN_EXE_capsid");

/// How long a test waits for anything (a loaded machine is slow; nothing is timed).
pub(crate) const PATIENCE: Duration = Duration::from_mins(1);

/// A private home, whose daemon is killed on drop if a test left it running.
pub(crate) struct Home {
    /// Kept for its lifetime: the folder goes when the test ends.
    _private: PrivateHome,
    pub(crate) path: PathBuf,
}

impl Home {
    pub(crate) fn new() -> Self {
        let private = PrivateHome::new();
        let path = private.path.clone();
        Self {
            _private: private,
            path,
        }
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        Command::new(CAPSID)
            .arg("--home")
            .arg(&self.path)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "capsid {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Installs built capsule `name` (it must succeed).
    pub(crate) fn install(&self, name: &str) {
        let dir = capsid_integration_tests::capsules_dir().join(name);
        self.ok(&["capsule", "install", dir.to_str().unwrap()]);
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed {out:?}: {e}"))
    }

    pub(crate) fn run_file(&self, name: &str) -> PathBuf {
        self.path.join("run").join(name)
    }

    pub(crate) fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.run_file("capsid.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub(crate) fn token(&self) -> String {
        std::fs::read_to_string(self.run_file("token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.run_file("capsid.sock")
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // A daemon served from this test process has removed its pid file by now; never
        // signal ourselves.
        if let Some(pid) = self
            .pid()
            .filter(|p| p.cast_unsigned() != std::process::id())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub(crate) async fn try_frame(stream: &mut UnixStream, body: &[u8]) -> std::io::Result<()> {
    let mut f = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    f.extend_from_slice(body);
    stream.write_all(&f).await
}

pub(crate) async fn frame(stream: &mut UnixStream, body: &[u8]) {
    try_frame(stream, body).await.unwrap();
}

/// The next frame, or `None` at end of stream.
pub(crate) async fn next(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<Value> {
    let mut len = [0u8; 4];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut len))
        .await
        .expect("an answer in time")
        .ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).await.ok()?;
    Some(serde_json::from_slice(&body).unwrap())
}

pub(crate) fn hello(token: &str) -> Vec<u8> {
    let hello = Hello {
        protocol: DAEMON_PROTOCOL_VERSION,
        token: token.to_owned(),
        fingerprint: String::new(),
    };
    serde_json::to_vec(&hello).unwrap()
}

/// The frame body of request `id` for `M`.
pub(crate) fn request<M: Method>(id: u64, params: &M::Params) -> Vec<u8> {
    serde_json::to_vec(&Request::new::<M>(id, params).unwrap()).unwrap()
}

pub(crate) async fn welcomed(home: &Home) -> UnixStream {
    let mut s = UnixStream::connect(home.socket()).await.unwrap();
    frame(&mut s, &hello(&home.token())).await;
    let welcome = next(&mut s).await.unwrap();
    assert!(welcome["error"].is_null(), "{welcome}");
    s
}

/// Polls `done` until it holds, for at most [`PATIENCE`].
pub(crate) fn until(what: &str, mut done: impl FnMut() -> bool) {
    let begun = std::time::Instant::now();
    while begun.elapsed() < PATIENCE {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never: {what}");
}

/// A JSON object literal as MCP tool arguments.
pub(crate) fn arguments(value: Value) -> rmcp::model::JsonObject {
    match value {
        Value::Object(map) => map,
        _ => panic!("arguments must be an object"),
    }
}

/// The names of the tools an MCP session lists, sorted.
pub(crate) async fn tool_names(session: &rmcp::Peer<rmcp::RoleClient>) -> Vec<String> {
    let mut names: Vec<String> = session
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.into_owned())
        .collect();
    names.sort();
    names
}
