//! `capsid:host/log`: lines into the capsule's log ring and `tracing`.

use crate::bindings::capsid::host::log::{Host, Level};
use crate::logbuf::{LogLevel, LogSource};

use super::HostState;

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.cx.log.push(level, LogSource::Guest, &message);
    }
}
