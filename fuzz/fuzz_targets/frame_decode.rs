#![no_main]
//! Fuzz target `frame_decode`: the input layout and the checks are documented on
//! `flightlog_fuzz::frame_decode`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flightlog_fuzz::frame_decode(data));
