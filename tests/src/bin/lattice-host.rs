//! A capsid host of a test lattice, in its own process so a test can SIGKILL it:
//! `lattice-host <home> <lattice config as JSON>`; prints `ready` once booted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(args.len(), 3, "usage: lattice-host <home> <lattice json>");
    capsid_integration_tests::lattice::run_host(std::path::Path::new(&args[1]), &args[2]).await;
}
