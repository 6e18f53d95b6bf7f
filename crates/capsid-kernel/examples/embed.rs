//! Embedding capsid: boot a kernel over a home directory, install a capsule, call one of its
//! tools, watch an event, and shut down.
//!
//! ```sh
//! cargo xtask build-capsules
//! cargo run -p capsid-kernel --example embed -- target/capsules/hello greet '{"name":"you"}'
//! ```

use std::path::PathBuf;

use capsid_events::EventBus;
use capsid_kernel::{CAPSULES_LOADED_TOPIC, Kernel, KernelConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(capsule_dir), Some(tool)) = (args.next(), args.next()) else {
        eprintln!("usage: embed <capsule dir> <tool> [json input]");
        std::process::exit(2);
    };
    let input = args.next().unwrap_or_else(|| "{}".into());

    // A private home for this run; a real program would keep one (default ~/.capsid).
    let scratch = tempfile::tempdir()?;
    let home = scratch.path().join("home");
    std::fs::create_dir(&home)?;
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;

    // Subscribe before boot to hear when the installed capsules are loaded.
    let bus = EventBus::new();
    let mut loaded = bus.subscribe(CAPSULES_LOADED_TOPIC, 4)?;
    let kernel = Kernel::builder()
        .home(&home)
        // Dev trust grants each capsule what its manifest asks for; without it an operator
        // grants capabilities (`kernel.grant(...)`, recorded, or `capsid cap grant`).
        .config(KernelConfig {
            dev: true,
            ..KernelConfig::default()
        })
        .bus(bus)
        .build()
        .await?;
    if let Some(event) = loaded.try_recv() {
        println!("boot: {}", String::from_utf8_lossy(&event.payload));
    }

    // Every load checks who signed the capsule. This program reviewed the capsule it was
    // given, so it signs it with the home's runtime key (always trusted; recorded); a host
    // would rather trust its publishers' keys (`kernel.trust_add(...)`).
    let dir = std::path::absolute(PathBuf::from(capsule_dir))?;
    kernel.sign_capsule(&dir).await?;
    let info = kernel.install(&dir, false).await?.capsule;
    println!("installed {} ({} tools)", info.name, info.tools.len());
    let output = kernel.call_tool(&info.name, &tool, &input).await?;
    println!("{}.{tool} -> {output}", info.name);

    kernel.shutdown().await;
    Ok(())
}
