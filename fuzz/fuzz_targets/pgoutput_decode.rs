#![no_main]
//! Fuzz target `pgoutput_decode`: one `XLogData` payload as Postgres's
//! pgoutput plugin would send it (untrusted bytes from the replication
//! connection). The property is `flightlog::replicate::pgoutput::fuzz_check`:
//! `decode` never panics, with and without a streamed-transaction xid, and
//! every message it accepts re-encodes to the same bytes. Inputs over
//! 64 KiB are skipped (a length field, not the input size, must bound any
//! allocation).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() <= 64 << 10 {
        flightlog::replicate::pgoutput::fuzz_check(data);
    }
});
