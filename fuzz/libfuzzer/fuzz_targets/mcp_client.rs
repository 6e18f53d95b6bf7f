#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| capsid_fuzz::mcp_client(data));
