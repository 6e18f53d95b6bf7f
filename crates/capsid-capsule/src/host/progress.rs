//! `capsid:host/progress`: reports of the tool call now running, passed to its caller's
//! [`crate::CallControl`] (nowhere, outside a tool call or when nobody watches).

use crate::bindings::capsid::host::progress::Host;

use super::HostState;

impl Host for HostState {
    fn report(&mut self, done: u64, total: Option<u64>, message: Option<String>) {
        self.control.report(done, total, message);
    }
}
