//! What a long run is doing, on a terminal: one progress bar on stderr for the current phase
//! (joining N sessions, warm-up, the measurement window). Hidden unless [`show`] was called, which
//! the binary does only when stderr is a terminal and `--json` is not given, so reports, pipes
//! and the CI tests see nothing of it.

use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// The bar every phase draws on; hidden (a no-op) unless [`show`] came first.
fn bar() -> &'static ProgressBar {
    BAR.get_or_init(ProgressBar::hidden)
}

/// Draw progress on stderr from now on (at most 4 redraws a second). Call before any phase.
pub fn show() {
    let shown = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
    // Already set: a phase ran first, and it stays hidden.
    let _ = BAR.set(shown);
}

/// A phase of `len` steps (sessions joined, seconds waited).
pub fn phase(what: &str, len: u64, unit: &str) {
    let b = bar();
    let template = format!("{{msg:>20}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what.to_string());
    b.set_length(len);
    b.set_position(0);
    b.reset_elapsed();
}

/// One more step done.
pub fn step() {
    bar().inc(1);
}

/// Position of a timed phase.
pub fn at(elapsed: Duration) {
    bar().set_position(elapsed.as_secs());
}

/// The run is over: clear the line (the report follows).
pub fn done() {
    bar().finish_and_clear();
}
