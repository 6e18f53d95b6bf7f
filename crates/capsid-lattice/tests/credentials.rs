//! Connecting with credentials to a real `nats-server` that requires them: a user with a
//! password file and an nkey seed file each connect, and the wrong secret, or none, is refused
//! naming the lattice and its server. (`.creds` files need an operator's JWTs, which this
//! suite does not set up: `ConnectOptions::with_credentials_file` reads them.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capsid_lattice::local::nats_server_binary;
use capsid_lattice::{Credentials, Lattice, LatticeConfig, LatticeError, LinkState};

/// A server process, killed however the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server with `authorization` (the body of its block); its URL.
fn start(dir: &Path, authorization: &str) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("server.conf");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nmax_payload: 8MB\nauthorization {{\n{authorization}\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new(nats_server_binary().unwrap())
        .arg("-c")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Server(child), format!("nats://127.0.0.1:{port}"))
}

fn config(url: &str, credentials: Option<Credentials>) -> LatticeConfig {
    LatticeConfig {
        name: "auth".into(),
        servers: vec![url.to_owned()],
        replicas: 1,
        credentials,
        trusted_hosts: Vec::new(),
        export: Vec::new(),
    }
}

/// Connects, trying again while the server is still starting (refused at the socket).
async fn connect(home: &Path, config: &LatticeConfig) -> Result<Lattice, LatticeError> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match Lattice::connect(config, home).await {
            Err(e) if e.to_string().contains("refused") && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

fn assert_refused(result: Result<Lattice, LatticeError>, url: &str) {
    let text = result.expect_err("refused").to_string();
    assert!(
        text.contains("\"auth\"") && text.contains(url) && text.contains("uthorization"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_a_password_file_connects_and_a_wrong_or_missing_one_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let (_server, url) = start(
        home.path(),
        "  users = [ { user: capsid, password: \"right horse battery\" } ]",
    );
    std::fs::write(home.path().join("good"), "right horse battery\n").unwrap();
    std::fs::write(home.path().join("bad"), "wrong horse battery\n").unwrap();
    let with = |file: &str| {
        config(
            &url,
            Some(Credentials {
                user: Some("capsid".into()),
                password_file: Some(file.into()),
                ..Credentials::default()
            }),
        )
    };
    let lattice = connect(home.path(), &with("good")).await.unwrap();
    assert_eq!(lattice.status().state, LinkState::Connected);
    assert_refused(connect(home.path(), &with("bad")).await, &url);
    assert_refused(connect(home.path(), &config(&url, None)).await, &url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_file_connects_and_another_key_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let (user, stranger) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    let (_server, url) = start(
        home.path(),
        &format!("  users = [ {{ nkey: {} }} ]", user.public_key()),
    );
    std::fs::write(home.path().join("user.nk"), user.seed().unwrap()).unwrap();
    std::fs::write(home.path().join("stranger.nk"), stranger.seed().unwrap()).unwrap();
    let with = |file: &str| {
        config(
            &url,
            Some(Credentials {
                nkey_seed_file: Some(file.into()),
                ..Credentials::default()
            }),
        )
    };
    let lattice = connect(home.path(), &with("user.nk")).await.unwrap();
    assert_eq!(lattice.status().state, LinkState::Connected);
    assert_refused(connect(home.path(), &with("stranger.nk")).await, &url);
}
