#![no_main]
//! Fuzz target `checkpoint_decode`: the input layout and the checks are documented on
//! `flightlog_fuzz::checkpoint_decode`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flightlog_fuzz::checkpoint_decode(data));
