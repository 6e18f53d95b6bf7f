//! A compile helper as an embedder would ship one: its whole `main` is capsid's.

fn main() -> std::process::ExitCode {
    capsid_capsule::serve_compile_helper()
}
