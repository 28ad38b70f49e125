#![no_main]
//! Fuzz target `segment_recovery`: the input layout and the checks are documented on
//! `flightlog_fuzz::segment_recovery`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flightlog_fuzz::segment_recovery(data));
