//! Never returns from `spin`: the epoch deadline must stop it.

use capsid_guest::{Capsule, Error};

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
}

capsid_guest::capsule!(Spin);
