//! Exports nothing: loading it must fail with a clear error naming it.
