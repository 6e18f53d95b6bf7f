//! `cargo xtask run --lattice`: a local `nats-server` with JetStream and two capsid hosts,
//! `a` and `b`, joined in the lattice `dev` and trusting each other, for trying a lattice
//! (see `docs/lattice.md`). `b` has `hello` and `counter`, `a` the other samples: a call for
//! `hello` made on `a` is served by `b`. Everything lives under `target/dev-lattice/`; Ctrl-C
//! stops all three.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{DEV_CONFIG_NOTE, DEV_SIGNING, build_capsules, cargo, dev_capsid, install_samples};

/// The port the local server listens on.
const NATS_PORT: u16 = 4229;
/// The samples host `b` serves; `a` has the others.
const ON_B: &[&str] = &["hello", "counter"];

/// Where `nats-server` is: `$CAPSID_NATS_SERVER`, else on `$PATH`, else Debian's place.
fn nats_server() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CAPSID_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| p.is_file())
        .context(
            "nats-server is not installed (apt install nats-server, or set CAPSID_NATS_SERVER)",
        )
}

/// Children stopped however `run` ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The runtime public key of the host at `home`, making its key first when it has none
/// (with `capsid key generate`, kept beside it in `host.pub`).
fn host_key(capsid: &Path, home: &Path) -> Result<String> {
    let public = home.join("host.pub");
    let keys = home.join("keys");
    let secret = keys.join("runtime.key");
    if secret.exists() && public.exists() {
        return Ok(std::fs::read_to_string(&public)?.trim().to_owned());
    }
    crate::private_dir(&keys)?;
    let _ = std::fs::remove_file(&secret);
    let out = Command::new(capsid)
        .arg("key")
        .arg("generate")
        .arg(&secret)
        .output()
        .with_context(|| format!("cannot run {}", capsid.display()))?;
    if !out.status.success() {
        bail!(
            "capsid key generate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|word| word.len() == 64)
        .context("capsid key generate printed no public key")?
        .to_owned();
    std::fs::write(&public, &key)?;
    Ok(key)
}

/// Writes the host's config: dev signing, the lattice, trusting `other`.
fn write_config(home: &Path, other: &str) -> Result<()> {
    let text = format!(
        "{DEV_CONFIG_NOTE}{DEV_SIGNING}\n[lattice]\nname = \"dev\"\n\
         servers = [\"nats://127.0.0.1:{NATS_PORT}\"]\ntrusted_hosts = [\"{other}\"]\n\
         export = [\"notes.*\"]\n"
    );
    let path = home.join("config.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// How long the local server may take to listen.
const NATS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until the server listens on [`NATS_PORT`] (a single node's JetStream is up by
/// then), or says why not: it exited, or it took too long.
fn wait_for_nats(server: &mut Child, log: &Path) -> Result<()> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", NATS_PORT)).is_err() {
        if let Some(status) = server.try_wait()? {
            bail!("nats-server exited ({status}); see {}", log.display());
        }
        if start.elapsed() > NATS_START_TIMEOUT {
            bail!(
                "nats-server did not listen on port {NATS_PORT} within {NATS_START_TIMEOUT:?}; \
                 see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn run(root: &Path) -> Result<()> {
    let built = build_capsules(root)?;
    cargo(root, &["build", "--locked", "--package", "capsid-cli"])?;
    let capsid = dev_capsid(root);
    let base = root.join("target").join("dev-lattice");
    let (a, b) = (base.join("a"), base.join("b"));
    install_samples(root, &built, &a, |name| !ON_B.contains(&name))?;
    install_samples(root, &built, &b, |name| ON_B.contains(&name))?;
    let (a_key, b_key) = (host_key(&capsid, &a)?, host_key(&capsid, &b)?);
    write_config(&a, &b_key)?;
    write_config(&b, &a_key)?;

    let nats = base.join("nats");
    std::fs::create_dir_all(&nats)?;
    let conf = nats.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "server_name: dev\nlisten: 127.0.0.1:{NATS_PORT}\nmax_payload: 8MB\n\
             jetstream {{\n  store_dir: {:?}\n}}\n",
            nats.join("store").display().to_string()
        ),
    )?;
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(nats_server()?)
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(nats.join("nats.log"))
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start nats-server")?,
    );
    wait_for_nats(&mut children.0[0], &nats.join("nats.log"))?;
    let daemon = |home: &Path| {
        Command::new(&capsid)
            .arg("--home")
            .arg(home)
            .args(["daemon", "--dev"])
            .spawn()
            .with_context(|| format!("cannot start {}", capsid.display()))
    };
    children.0.push(daemon(&b)?);
    let (c, ah) = (capsid.display(), a.display());
    println!(
        "lattice `dev` on nats://127.0.0.1:{NATS_PORT}: host a ({ah}), host b ({})",
        b.display()
    );
    println!("once both say \"ready\", in another terminal try:");
    println!("  {c} --home {ah} status");
    println!("  {c} --home {ah} cap grant 'tool://hello/*' exec     # a's operator, on b too");
    println!("  {c} --home {ah} call hello greet --input '{{\"name\":\"you\"}}'   # served by b");
    println!("  {c} --home {} audit tail", b.display());
    println!("  {c} --home {ah} audit verify --lattice");
    println!("the server logs to {}", nats.join("nats.log").display());
    println!("Ctrl-C stops both hosts and the server.");
    let mut host_a = daemon(&a)?;
    let status = host_a.wait()?;
    drop(children);
    if !status.success() {
        bail!("host a stopped: {status}");
    }
    Ok(())
}
