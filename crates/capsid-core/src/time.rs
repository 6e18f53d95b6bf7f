//! Wall-clock time as capsid records it.

/// Milliseconds since the Unix epoch (0 for a clock set before it, `i64::MAX` past 292
/// million years).
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
