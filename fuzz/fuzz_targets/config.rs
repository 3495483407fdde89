//! `levee_config::parse` on arbitrary text: it must never panic, and every
//! error must name the file it came from (and point at a line of it).
#![no_main]

use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Err(e) = levee_config::parse(&text, ORIGIN) else {
        return;
    };
    let shown = e.to_string();
    assert!(
        shown.starts_with(ORIGIN),
        "error does not name the file: {shown:?}"
    );
    assert_eq!(e.origin(), ORIGIN);
    if let Some(line) = e.line() {
        let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
        assert!(
            (1..=lines).contains(&line),
            "error points at line {line} of a {lines}-line text: {shown:?}"
        );
    }
});
