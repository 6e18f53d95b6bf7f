//! Grows its memory a MiB at a time, touching every page, until the host stops it.

use capsid_guest::{Capsule, Error};

struct Hog;

impl Capsule for Hog {
    fn call_tool(name: String, _input: String) -> Result<String, Error> {
        if name != "hog" {
            return Err(capsid_guest::unknown_tool(&name));
        }
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![0xA5; 1 << 20]));
        }
    }
}

capsid_guest::capsule!(Hog);
