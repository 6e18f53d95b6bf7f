//! Targets the `wasi:cli/command` world instead of `capsid:host/capsule`: loading it must
//! fail with a clear error and leave the runtime serving the other capsules.

fn main() {
    println!("I am not a capsule");
}
