//! A scene's closing verdict: every claim the demo makes about an outcome is
//! a check of a measured figure against a stated threshold, so the demo
//! cannot say "contained" about a run that was not.

use std::fmt::Write as _;
use std::io::IsTerminal as _;

/// The checks of one scene, in the order they were made.
#[derive(Debug, Default)]
pub struct Verdict {
    checks: Vec<Check>,
}

/// One claim, what was measured, and whether the measurement bears it out.
#[derive(Debug)]
struct Check {
    holds: bool,
    text: String,
}

impl Verdict {
    /// `claim` holds when `measured` is at least `min`; `unit` follows both
    /// figures when printed (e.g. "%", " requests").
    pub fn at_least(&mut self, claim: &str, measured: f64, min: f64, unit: &str) {
        self.record(
            measured >= min,
            format!(
                "{claim}: {} (needs >= {}{unit})",
                figure(measured, unit),
                figure(min, "")
            ),
        );
    }

    /// `claim` holds when `measured` is at most `max`.
    pub fn at_most(&mut self, claim: &str, measured: f64, max: f64, unit: &str) {
        self.record(
            measured <= max,
            format!(
                "{claim}: {} (needs <= {}{unit})",
                figure(measured, unit),
                figure(max, "")
            ),
        );
    }

    /// A claim that is a yes/no observation; `seen` says what was measured.
    pub fn observed(&mut self, holds: bool, claim: &str, seen: &str) {
        self.record(holds, format!("{claim}: {seen}"));
    }

    /// Fewer than `min` requests measured: too few to judge anything else.
    pub fn enough_requests(&mut self, what: &str, requests: u64, min: u64) {
        self.at_least(
            &format!("{what}: requests measured"),
            requests as f64,
            min as f64,
            "",
        );
    }

    fn record(&mut self, holds: bool, text: String) {
        self.checks.push(Check { holds, text });
    }

    /// Every check holds (and there was at least one).
    pub fn contained(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.holds)
    }

    /// The verdict as printed; `colour` adds ANSI colours to its key words.
    pub fn render(&self, colour: bool) -> String {
        let paint = |word: &str, code: u8| match colour {
            true => format!("\x1b[1;{code}m{word}\x1b[0m"),
            false => word.to_owned(),
        };
        let failed = self.checks.iter().filter(|c| !c.holds).count();
        let mut out = match (self.checks.is_empty(), failed) {
            (true, _) => format!(
                "  verdict: {}: nothing was checked\n",
                paint("NOT SHOWN", 31)
            ),
            (false, 0) => format!(
                "  verdict: {} ({} of {} checks hold)\n",
                paint("contained", 32),
                self.checks.len(),
                self.checks.len()
            ),
            (false, n) => format!(
                "  verdict: {} ({n} of {} checks failed)\n",
                paint("NOT contained", 31),
                self.checks.len()
            ),
        };
        for c in &self.checks {
            let mark = match c.holds {
                true => paint("ok  ", 32),
                false => paint("FAIL", 31),
            };
            let _ = writeln!(out, "    {mark} {}", c.text);
        }
        out
    }

    /// Prints the verdict, in colour only on a terminal.
    pub fn print(&self) {
        print!("{}", self.render(std::io::stdout().is_terminal()));
    }
}

/// A figure with up to two decimals, trailing zeros dropped.
fn figure(v: f64, unit: &str) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_makes_the_verdict_not_contained_and_says_which() {
        let mut v = Verdict::default();
        v.at_least("reads answered 2xx", 99.5, 99.0, "%");
        assert!(v.contained());
        v.at_most("writes answered 5xx", 12.0, 1.0, "%");
        assert!(!v.contained());
        let text = v.render(false);
        assert!(
            text.contains("NOT contained (1 of 2 checks failed)"),
            "{text}"
        );
        assert!(
            text.contains("ok   reads answered 2xx: 99.5% (needs >= 99%)"),
            "{text}"
        );
        assert!(
            text.contains("FAIL writes answered 5xx: 12% (needs <= 1%)"),
            "{text}"
        );
        assert!(
            !text.contains('\x1b'),
            "no colour codes when asked for none"
        );
        assert!(v.render(true).contains("\x1b[1;31m"));
    }

    #[test]
    fn no_checks_or_too_few_requests_is_not_contained() {
        assert!(!Verdict::default().contained());
        let mut v = Verdict::default();
        v.enough_requests("readers", 0, 20);
        v.observed(true, "breaker opened", "after 120ms");
        assert!(!v.contained());
        assert!(v
            .render(false)
            .contains("readers: requests measured: 0 (needs >= 20)"));
    }
}
