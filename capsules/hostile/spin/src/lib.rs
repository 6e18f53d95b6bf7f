//! Never returns from `spin`: the epoch deadline must stop it. Logs each reload it is told
//! of, so a test can see why the health monitor brought it back.

use capsid_guest::{Capsule, Error, RestartCause};

struct Spin;

impl Capsule for Spin {
    fn call_tool(name: String, _input: String) -> Result<String, Error> {
        if name != "spin" {
            return Err(capsid_guest::unknown_tool(&name));
        }
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }

    fn restart(cause: RestartCause, restarts: u32) -> Result<(), Error> {
        let cause = match cause {
            RestartCause::Reload => "reload",
            RestartCause::Recovery => "recovery",
            RestartCause::SourceChanged => "source-changed",
        };
        capsid_guest::info(&format!("restarted: {cause} #{restarts}"));
        Ok(())
    }
}

capsid_guest::capsule!(Spin);
